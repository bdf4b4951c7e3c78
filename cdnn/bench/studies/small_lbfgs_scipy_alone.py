"""scipy's L-BFGS-B on its own, no cdnn: a quadratic with as many parameters as a 10-100-1
network (1,201), at the default BLAS threads and at one. What it prints bounds the small-work
goal "L-BFGS-B over loss_and_grad at the default threads within 1.5x of one thread": scipy's own
iterations call a BLAS whose threads cost more than they save at this size.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m cdnn.bench.studies.small_lbfgs_scipy_alone
"""
import statistics
import time

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits

N = 1201
D = np.linspace(1, 50, N)


def quadratic(p):
    return 0.5 * np.sum(D * p * p) - p.sum(), D * p - 1


def ms_per_iteration() -> float:
    start = time.perf_counter()
    result = scipy.optimize.minimize(quadratic, np.zeros(N), jac=True, method="L-BFGS-B",
                                     options={"maxiter": 200})
    return 1e3 * (time.perf_counter() - start) / result.nit


def main():
    default, one = [], []
    for _ in range(5):
        default.append(ms_per_iteration())
        with threadpool_limits(limits=1):
            one.append(ms_per_iteration())
    d, o = statistics.median(default), statistics.median(one)
    print(f"scipy L-BFGS-B alone, {N} parameters, median of 5 runs:")
    print(f"  default BLAS threads: {d:.3f} ms/iteration")
    print(f"  one BLAS thread:      {o:.3f} ms/iteration")
    print(f"  ratio default/one:    {d / o:.1f}x")


if __name__ == "__main__":
    main()
