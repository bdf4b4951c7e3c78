"""The two builds of the kernels: the portable one and, on x86-64, the AVX2 one. The library
runs the AVX2 build where the CPU has AVX2, and the two must compute the same bits."""
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cdnn import _native, _network

HAS_AVX2_BUILD = importlib.util.find_spec("cdnn._network_avx2") is not None

# Everything the kernels do, in both dtypes: training with every activation, optimizer,
# dropout, L2, clipping and sample weights, on one and two threads; a standalone optimizer
# step; predictions of a batch and of single rows with and without zeros. Saved to argv[1].
WORKLOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import cdnn
    from cdnn._native import VARIANT
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 20))
    X[:, :8] = np.maximum(X[:, :8], 0)       # some zeros, as after a ReLU
    y = rng.integers(0, 3, 300)
    w = rng.uniform(0.5, 2, 300)
    out = {"variant": np.array(VARIANT)}
    cases = [("relu", lambda: cdnn.SGD(0.05, momentum=0.9, nesterov=True), 1),
             ("gelu", lambda: cdnn.Adam(0.01, weight_decay=1e-3), 2),
             ("tanh", lambda: cdnn.RMSprop(0.01, momentum=0.5), 1),
             ("sigmoid", lambda: cdnn.AdamW(0.01), 2),
             ("leaky_relu", lambda: cdnn.SGD(0.1), 2)]
    for dtype in ("float32", "float64"):
        for activation, make_optimizer, threads in cases:
            opt = make_optimizer()
            net = cdnn.MLP([20, 33, 17, 3], activation=activation, dtype=dtype, seed=1,
                           dropout=0.2, l2=1e-3)
            with cdnn.limit_threads(threads):
                cdnn.Trainer(net, opt, batch_size=16, clip_norm=1.0, seed=2).fit(
                    X, y, epochs=2, sample_weight=w, verbose=0)
            key = f"{dtype}-{activation}"
            out[key] = net.params.copy()
            out[key + "-proba"] = net.predict_proba(X)
            out[key + "-rows"] = np.vstack([net.forward(X[i:i + 1].astype(dtype))
                                           for i in range(20)])
            loss, grad = net.loss_and_grad(X, y)
            opt.step(net.params, grad)
            out[key + "-step"] = net.params.copy()
    np.savez(sys.argv[1], **out)
""")


def run_workload(path, kernels):
    env = dict(os.environ, CDNN_KERNELS=kernels)
    # from path's directory: -c puts the working directory first on sys.path, and the
    # repository root holds the uncompiled source tree
    subprocess.run([sys.executable, "-c", WORKLOAD, str(path)], check=True, env=env,
                   cwd=path.parent)
    return dict(np.load(path))


def test_the_library_runs_the_fastest_build_this_cpu_can():
    expected = "avx2" if HAS_AVX2_BUILD and _network.cpu_supports_avx2() else "portable"
    assert _native.VARIANT == expected
    assert _native._network.__name__.endswith("_avx2") == (expected == "avx2")
    # one build of the test wrappers (setup.py): the bits of the two engines are compared below
    assert _native.testing_kernels().__name__ == "cdnn._testing"


def variant_under(kernels):
    """What CDNN_KERNELS=kernels makes a fresh process import: (exit status, last stderr line
    or the variant)"""
    result = subprocess.run(
        [sys.executable, "-c", "import cdnn._native as n; print(n.VARIANT)"], cwd="/",
        env=dict(os.environ, CDNN_KERNELS=kernels), capture_output=True, text=True)
    lines = (result.stdout if result.returncode == 0 else result.stderr).strip().splitlines()
    return result.returncode, lines[-1]


def test_cdnn_kernels_chooses_the_build():
    fastest = _native.VARIANT
    assert variant_under("") == (0, fastest)
    assert variant_under("auto") == (0, fastest)
    assert variant_under("portable") == (0, "portable")
    if fastest == "avx2":
        assert variant_under("avx2") == (0, "avx2")
    else:
        status, error = variant_under("avx2")
        assert status != 0 and "RuntimeError: CDNN_KERNELS=avx2, but this" in error


def test_an_unknown_cdnn_kernels_is_named():
    status, error = variant_under("avx512")
    assert status != 0
    assert error == ("ValueError: CDNN_KERNELS='avx512': choose one of auto, portable, avx2")


@pytest.mark.skipif(not (HAS_AVX2_BUILD and _network.cpu_supports_avx2()),
                    reason="needs the AVX2 build and a CPU with AVX2")
def test_both_builds_compute_the_same_bits(tmp_path):
    fast = run_workload(tmp_path / "avx2.npz", "")
    portable = run_workload(tmp_path / "portable.npz", "portable")
    assert fast.pop("variant") == "avx2" and portable.pop("variant") == "portable"
    assert fast.keys() == portable.keys() and len(fast) == 40
    for key in fast:
        assert np.all(np.isfinite(fast[key])), key
        np.testing.assert_array_equal(fast[key], portable[key], err_msg=key)
