"""The CUDA kernels (cdnn/cuda/kernels.cu) against the numpy references of the CPU kernels.

Where there is no GPU, the same source is compiled as C++ by g++ under host_shim.h and each
launch runs its grid's threads one after another; each kernel is launched with grids smaller and
larger than its work, so the grid-stride loops are exercised. The suite also compiles every
kernel for Hopper with nvcc (skipped without nvcc). On a GPU, CDNN_TEST_CUDA_DEVICE=1 runs the
same tests through CuPy instead (bench/gpu_check.py does).
"""
import os
import shutil
import subprocess

import numpy as np
import pytest
from scipy.special import softmax

import reference as ref
from cdnn import _native
from cdnn import kinds
from cdnn._engine import Batch, Engine
from cdnn._native import _network
from cdnn.cuda import kernels as K
from conftest import DTYPES, RTOL

ACTIVATIONS = list(kinds.ACTIVATIONS)
LOSSES = list(kinds.LOSSES)
GRIDS = [(1, 1), (3, 4), (64, 32)]      # (blocks, threads): fewer and more than the work
NULL = np.uint64(0)

if os.environ.get("CDNN_TEST_CUDA_DEVICE"):   # on a GPU: the NVRTC build, through CuPy
    import cupy as xp
    from cdnn.cuda.backend import cupy_module
    MODULE = cupy_module()
else:
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler to build the CUDA kernels for the CPU",
                    allow_module_level=True)
    xp = np
    MODULE = K.host_module()


def launch(name, dtype, grid, *args):
    """kernel `name` for dtype over grid = (blocks, threads per block)"""
    args = tuple(xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    MODULE.get_function(K.kernel_name(name, dtype))((grid[0],), (grid[1],), args)
    return args


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def close(actual, expected, dtype, scale=1.0):
    np.testing.assert_allclose(host(actual), expected, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * 10 * scale)


def T(dtype):
    return np.dtype(dtype).type


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", GRIDS)
def test_gather_rows_and_labels(rng, dtype, grid):
    src = rng.normal(size=(11, 5)).astype(dtype)
    labels = rng.integers(0, 7, 11).astype(np.int32)
    idx = np.array([3, 0, 10, 3, 7], dtype=np.int64)
    dst, lab = np.zeros((5, 5), dtype), np.zeros(5, np.int32)
    dst, _, _, _, _ = launch("gather_rows", dtype, grid, dst, src, idx, np.int64(5), np.int32(5))
    lab, *_ = launch("gather_labels", None, grid, lab, labels, idx, np.int64(5))
    np.testing.assert_array_equal(host(dst), src[idx])
    np.testing.assert_array_equal(host(lab), labels[idx])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("grid", GRIDS)
def test_bias_activation(rng, dtype, activation, grid):
    rows, cols = 7, 13
    z0 = (rng.normal(size=(rows, cols)) * 3).astype(dtype)
    b = rng.normal(size=cols).astype(dtype)
    z, a = z0.copy(), np.full((rows, cols), np.nan, dtype)
    z, a, *_ = launch("bias_activation", dtype, grid, z, a, b, np.int64(rows), np.int32(cols),
                      np.int32(kinds.ACTIVATIONS[activation].kernel), T(dtype)(0.01))
    expected_z = z0.astype(float) + b
    close(a, ref.activate(expected_z, activation), dtype)
    close(z, expected_z if activation == "gelu" else z0, dtype)   # only GELU keeps z
    x, *_ = launch("activation_inplace", dtype, grid, z0.copy(), np.int64(z0.size),
                   np.int32(kinds.ACTIVATIONS[activation].kernel), T(dtype)(0.01))
    close(x, ref.activate(z0.astype(float), activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("chunk_rows", [1, 4, 9, 100])
@pytest.mark.parametrize("accumulate", [0, 1])
def test_activation_backward_and_bias_gradient(rng, dtype, activation, chunk_rows, accumulate):
    rows, cols = 9, 13
    z = (rng.normal(size=(rows, cols)) * 3).astype(dtype)
    a = ref.activate(z.astype(float), activation).astype(dtype)
    upstream = rng.normal(size=(rows, cols)).astype(dtype)
    chunks = -(-rows // chunk_rows)
    partial = np.full((chunks, cols), np.nan, dtype)
    d, _, _, _, _, _, _, partial, _ = launch(
        "activation_backward_bias", dtype, (3, 4), upstream.copy(), a, z, np.int64(rows),
        np.int32(cols), np.int32(kinds.ACTIVATIONS[activation].kernel), T(dtype)(0.01), partial,
        np.int64(chunk_rows))
    dz = upstream * ref.derivative(z.astype(float), activation)
    close(d, dz, dtype)
    db0 = rng.normal(size=cols).astype(dtype)
    db, *_ = launch("sum_chunks", dtype, (2, 5), db0.copy(), host(partial), np.int64(chunks),
                    np.int32(cols), np.int32(accumulate))
    close(db, dz.sum(axis=0) + (db0 if accumulate else 0), dtype, scale=rows)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_is_the_cpu_kernels_mask(rng, dtype):
    """The same hash of (seed, step, unit) as src/dropout.pxd: the CPU's masks, bit for bit"""
    kernels = _native.testing_kernels()
    a = rng.normal(size=(6, 50)).astype(dtype)
    expected = np.empty_like(a)
    kernels.dropout(expected, a, 0.3, 42, 6)      # step 6: the 7th step's mask
    step0 = np.array([2], np.int64)
    out, *_ = launch("dropout", dtype, (3, 7), np.zeros_like(a), a, np.int64(6), np.int32(50),
                     np.float64(0.3), np.uint64(42), step0, np.int32(4))
    np.testing.assert_array_equal(host(out), expected)


def _loss_inputs(rng, dtype, name, rows, k, weighted, dense_targets):
    z = (rng.normal(size=(rows, k)) * 2).astype(dtype)
    labels = rng.integers(0, k, rows).astype(np.int32)
    if name == "softmax_cross_entropy":
        t = (softmax(rng.normal(size=(rows, k)), axis=1) if dense_targets
             else np.eye(k)[labels])
    elif name == "poisson":
        t = rng.poisson(2.0, size=(rows, k)).astype(float)
    elif name == "sigmoid_cross_entropy":
        t = rng.integers(0, 2, size=(rows, k)).astype(float)
    else:
        t = rng.normal(size=(rows, k))
    w = rng.uniform(0.5, 2, rows).astype(dtype) if weighted else None
    use_labels = name == "softmax_cross_entropy" and not dense_targets
    return z, labels if use_labels else None, None if use_labels else t.astype(dtype), w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dense_targets", [False, True])
def test_loss_delta_scale_and_sums(rng, dtype, name, weighted, dense_targets):
    rows, k = 17, 4
    z, labels, t, w = _loss_inputs(rng, dtype, name, rows, k, weighted, dense_targets)
    code = np.int32(kinds.LOSSES[name].kernel)
    scale = np.zeros(1, dtype)
    scale = launch("loss_scale", dtype, (2, 3), w if w is not None else NULL, np.int64(rows),
                   np.int32(1 if name == "softmax_cross_entropy" else k), scale)[3]
    delta, stats = np.full((rows, k), np.nan, dtype), np.full((rows, 2), np.nan)
    out = launch("loss_delta", dtype, (2, 3), code, z, NULL if labels is None else labels,
                 NULL if t is None else t, NULL if w is None else w, host(scale), delta, stats,
                 np.int64(rows), np.int32(k))
    delta, stats = host(out[6]), host(out[7])
    targets = np.eye(k)[labels] if labels is not None else t.astype(float)
    expected_loss, expected_delta = ref.loss_and_delta(name, z.astype(float), targets,
                                                       None if w is None else w.astype(float))
    close(delta, expected_delta, dtype)
    # the partial sums, then their sum: the step's loss
    partial = np.full((5, 2), np.nan)
    partial = host(launch("strided_sum", None, (1, 2), stats, np.int64(rows), partial,
                          np.int32(5), np.int32(1))[2])
    sums = host(launch("strided_sum", None, (1, 1), partial, np.int64(5), np.zeros(2),
                       np.int32(1), np.int32(1))[2])
    losses, corrects, status = np.zeros(3), np.zeros(3), np.zeros(2, np.int32)
    out = launch("finish_loss", dtype, (1, 2), sums, host(scale), NULL, np.float64(0), losses,
                 corrects, np.int32(1), status, np.ones(1))
    close(host(out[4])[1], expected_loss, dtype)
    np.testing.assert_array_equal(host(out[7]), [0, 0])
    # correct predictions, as the CPU kernel counts them
    identity = Engine([k, k], ["identity"], name, 0.01, [0.0], 0.0, np.dtype(dtype))
    expected_correct = identity.evaluate(
        np.r_[np.eye(k).ravel(), np.zeros(k)].astype(dtype),
        Batch(z, labels, None if labels is not None else t, w))[1]
    np.testing.assert_allclose(host(out[5])[1], expected_correct, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_loss_that_is_not_finite_fails_the_step_once(dtype):
    status = np.zeros(2, np.int32)
    for s, loss in [(3, np.inf), (5, np.nan)]:      # the first failure is the one kept
        status = host(launch("finish_loss", dtype, (1, 1), np.array([loss, 0.0]),
                             np.ones(1, dtype), NULL, np.float64(0), np.zeros(9), np.zeros(9),
                             np.int32(s), status, np.ones(1))[7])
    np.testing.assert_array_equal(status, [1, 3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", GRIDS)
def test_sum_squares_l2_gradient_and_clip(rng, dtype, grid):
    n, threads = 1001, grid[0] * grid[1]
    g = rng.normal(size=n).astype(dtype)
    partial = host(launch("sum_squares", dtype, grid, g, np.int64(n),
                          np.full(threads, np.nan))[2])
    total = host(launch("strided_sum", None, (1, 1), partial, np.int64(threads), np.zeros(1),
                        np.int32(1), np.int32(0))[2])
    np.testing.assert_allclose(total[0], (g.astype(float) ** 2).sum(), rtol=1e-12)
    W, dW = rng.normal(size=n).astype(dtype), rng.normal(size=n).astype(dtype)
    out = launch("l2_gradient", dtype, grid, dW.copy(), W, np.int64(n), T(dtype)(0.1),
                 np.full(threads, np.nan))
    close(out[0], dW + np.float64(T(dtype)(0.1)) * W, dtype)
    np.testing.assert_allclose(host(out[4]).sum(), (W.astype(float) ** 2).sum(), rtol=1e-12)
    norm = np.sqrt(total[0])
    for clip, expected in [(norm * 2, 1.0), (norm / 4, norm / 4 / (norm + 1e-6))]:
        gscale = host(launch("clip_scale", None, (1, 3), total, np.float64(clip), np.ones(1),
                             np.int32(0), np.zeros(2, np.int32))[2])
        np.testing.assert_allclose(gscale[0], expected, rtol=1e-12)
    status = host(launch("clip_scale", None, (1, 1), np.array([np.inf]), np.float64(1),
                         np.ones(1), np.int32(7), np.zeros(2, np.int32))[4])
    np.testing.assert_array_equal(status, [2, 7])


# (kernel, its configuration, the table's reference and its hyper-parameters)
OPTIMIZERS = [
    ("sgd", dict(), "sgd", dict()),
    ("sgd", dict(momentum=0.9, weight_decay=0.01), "sgd", dict(momentum=0.9, weight_decay=0.01)),
    ("sgd", dict(momentum=0.9, nesterov=True), "sgd", dict(momentum=0.9, nesterov=True)),
    ("adam", dict(weight_decay=0.01), "adam", dict(weight_decay=0.01)),
    ("adam", dict(weight_decay=0.01, decoupled=True), "adamw", dict(weight_decay=0.01)),
    ("adam", dict(eps_inside=True), "adam", dict(eps_inside=True)),
    ("rmsprop", dict(), "rmsprop", dict()),
    ("rmsprop", dict(momentum=0.9, weight_decay=0.01), "rmsprop",
     dict(momentum=0.9, weight_decay=0.01)),
]


def _update_args(kind, config, dtype, p, g, s1, s2, lrs, step0, s, gscale, status):
    t = T(dtype)
    common = (np.int64(p.size), lrs)
    if kind == "sgd":
        return (p, g, s1, *common, np.int32(s), gscale, status, t(config.get("momentum", 0)),
                t(config.get("weight_decay", 0)), np.int32(config.get("nesterov", False)))
    if kind == "adam":
        return (p, g, s1, s2, *common, step0, np.int32(s), gscale, status, np.float64(0.9),
                np.float64(0.999), np.float64(1e-8), t(config.get("weight_decay", 0)),
                np.int32(config.get("eps_inside", False)), np.int32(config.get("decoupled", 0)))
    return (p, g, s1, s2, *common, np.int32(s), gscale, status, t(0.99), t(1e-8),
            t(config.get("momentum", 0)), t(config.get("weight_decay", 0)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,config,name,hyper", OPTIMIZERS)
def test_optimizer_updates(rng, dtype, kind, config, name, hyper):
    n = 37
    p, s1, s2 = (rng.normal(size=n).astype(dtype) for _ in range(3))
    s2 = np.abs(s2)             # v (Adam) is ≥ 0, as is RMSprop's square average (s1)
    s1 = np.abs(s1) if kind == "rmsprop" else s1
    expected = [a.astype(float) for a in (p, s1, s2)]
    table = kinds.OPTIMIZERS[name]
    state = dict(zip(table.state, expected[1:]))     # the kernel's s1, s2 in the table's order
    lrs, step0 = np.array([0.1, 0.01, 0.05]), np.array([4], np.int64)
    for s in range(3):          # three steps: step numbers 5, 6, 7 and their learning rates
        g = rng.normal(size=n).astype(dtype)
        args = launch(f"{kind}_update", dtype, (2, 8),
                      *_update_args(kind, config, dtype, p, g, s1, s2, lrs, step0, s,
                                    np.full(1, 0.5), np.zeros(2, np.int32)))
        p, s1 = host(args[0]), host(args[2])
        s2 = host(args[3]) if kind != "sgd" else s2
        expected[0] = table.reference(expected[0], 0.5 * g.astype(float), state, lrs[s], 5 + s,
                                      **hyper)
    close(p, expected[0], dtype, scale=10)
    close(s1, expected[1], dtype, scale=10)
    close(s2, expected[2], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_an_update_to_a_non_finite_value_sets_the_status_and_later_ones_do_nothing(dtype):
    p, g = np.ones(10, dtype), np.ones(10, dtype)
    g[3] = np.inf
    status = np.zeros(2, np.int32)
    args = (p, g, np.zeros(10, dtype), np.int64(10), np.ones(2), np.int32(1), np.ones(1), status,
            T(dtype)(0), T(dtype)(0), np.int32(0))
    out = launch("sgd_update", dtype, (1, 4), *args)
    np.testing.assert_array_equal(host(out[7]), [4, 1])
    g[3] = 1
    p_after = host(out[0]).copy()
    out = launch("sgd_update", dtype, (1, 4), p_after.copy(), g, *args[2:7], host(out[7]),
                 *args[8:])
    np.testing.assert_array_equal(host(out[0]), p_after)     # a failed run updates no more


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_rows_and_finite_check(rng, dtype):
    z = (rng.normal(size=(9, 5)) * 30).astype(dtype)
    close(launch("softmax_rows", dtype, (2, 2), z.copy(), np.int64(9), np.int32(5))[0],
          softmax(z.astype(float), axis=1), dtype)
    flag = host(launch("find_nonfinite", dtype, (2, 2), z, np.int64(z.size),
                       np.zeros(1, np.int32))[2])
    assert flag[0] == 0
    z[8, 4] = np.nan
    flag = host(launch("find_nonfinite", dtype, (2, 2), z, np.int64(z.size),
                       np.zeros(1, np.int32))[2])
    assert flag[0] == 1


@pytest.mark.skipif(xp is not np, reason="the CPU build's own checks")
def test_the_cpu_build_checks_every_argument_against_the_signature():
    kernel = MODULE.get_function("gather_labels")
    ok = (np.zeros(2, np.int32), np.zeros(2, np.int32), np.zeros(2, np.int64), np.int64(2))
    with pytest.raises(TypeError, match="takes 4 arguments"):
        kernel((1,), (1,), ok[:3])
    with pytest.raises(TypeError, match="argument 3 must be a numpy int64"):
        kernel((1,), (1,), ok[:3] + (2,))
    with pytest.raises(TypeError, match="argument 2 must be an array of int64"):
        kernel((1,), (1,), (ok[0], ok[1], np.zeros(2, np.int32), ok[3]))


def test_every_kernel_the_engine_names_is_compiled():
    if xp is np:
        assert sorted(MODULE.entries) == sorted(K.name_expressions())
    for name in K.name_expressions():
        MODULE.get_function(name)


def test_the_kernels_compile_for_hopper(tmp_path):
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc")
                                    and "/usr/local/cuda/bin/nvcc")
    if not nvcc:
        pytest.skip("nvcc not found")
    program = tmp_path / "kernels.cu"
    program.write_text(K.nvcc_program())
    result = subprocess.run([nvcc, "-ptx", "-arch=sm_90", "-std=c++17", "-Werror",
                             "all-warnings", "-o", str(tmp_path / "kernels.ptx"), str(program)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "kernels.ptx").read_text()
    assert ptx.count(".entry") == len(K.name_expressions())
