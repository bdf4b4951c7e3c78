"""Every kernel against its numpy reference, in both dtypes, on awkward shapes."""
import numpy as np
import pytest

import reference as ref
from cdnn import _native
from cdnn._native import _network
from cdnn.kinds import ACTIVATIONS, LOSSES, OPTIMIZERS as OPTIMIZER_KINDS
from conftest import DTYPES, RTOL

kernels = _native.testing_kernels()   # portable: test_native.py shows the AVX2 engine matches it

# (rows, n_in, n_out): one row, one unit, widths that are not multiples of 8
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 9), (13, 17, 11), (64, 33, 10)]


def close(actual, expected, dtype, scale=1.0):
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * 10 * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_matmul(rng, dtype, m, k, n, trans_a, trans_b):
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    expected = 2 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + 0.5 * c
    kernels.matmul(a, b, c, trans_a, trans_b, 2, 0.5)
    close(c, expected, dtype, scale=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [2, 3, 8, 9])            # up to 8 rows read B once; 9: GEMM
@pytest.mark.parametrize("k", [1, 3, 4, 9, 300])      # whole groups of four rows of B, and not
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_a_few_rows_times_a_matrix(rng, dtype, m, k, beta):
    """A few rows read B once, four rows of it at a time, skipping a row's groups of zeros"""
    a = rng.normal(size=(m, k))
    a[:, : k // 2] = 0                      # whole groups of zeros in every row
    a[0, rng.permutation(k)[: k // 3]] = 0  # and scattered ones
    b = rng.normal(size=(k, 11))
    c0 = rng.normal(size=(m, 11))
    c = (np.full_like(c0, np.nan) if beta == 0 else c0).astype(dtype)  # beta 0: c is garbage
    expected = 2 * (a.astype(dtype).astype(float) @ b.astype(dtype)) + beta * c0.astype(dtype)
    kernels.matmul(a.astype(dtype), b.astype(dtype), c, False, False, 2, beta)
    close(c, expected, dtype, scale=k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 7, 300, 1100])       # 300, 1100: more than one pass of rows
@pytest.mark.parametrize("zeros", [0.0, 0.49, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_one_row_with_zeros_times_a_matrix(rng, dtype, k, zeros, beta):
    """From half zeros on, one row's product reads only the rows of B facing nonzero entries"""
    a = rng.normal(size=(1, k))
    a[0, rng.permutation(k)[:int(zeros * k)]] = 0
    b = rng.normal(size=(k, 13))
    c0 = rng.normal(size=(1, 13))
    c = (np.full_like(c0, np.nan) if beta == 0 else c0).astype(dtype)  # beta 0: c is garbage
    expected = 2 * (a.astype(dtype).astype(float) @ b.astype(dtype)) + beta * c0.astype(dtype)
    kernels.matmul(a.astype(dtype), b.astype(dtype), c, False, False, 2, beta)
    close(c, expected, dtype, scale=k)


def test_matmul_rejects_mismatched_shapes():
    a, b = np.ones((2, 3)), np.ones((4, 2))
    with pytest.raises(ValueError):
        kernels.matmul(a, b, np.empty((2, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (17, 13)])
def test_bias_activation(rng, dtype, activation, rows, cols):
    z0 = rng.normal(size=(rows, cols)) * 3
    b = rng.normal(size=cols)
    z, a = z0.astype(dtype), np.empty((rows, cols), dtype)
    kernels.bias_activation(z, a, b.astype(dtype), activation)
    expected_z = z0.astype(dtype).astype(float) + b.astype(dtype)
    close(a, ref.activate(expected_z, activation), dtype)
    if activation == "gelu":    # only GELU keeps its pre-activation
        close(z, expected_z, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_grad(rng, dtype, activation):
    rows, cols = 9, 13
    z = (rng.normal(size=(rows, cols)) * 3).astype(dtype)
    a = ref.activate(z.astype(float), activation).astype(dtype)
    upstream = rng.normal(size=(rows, cols))
    d = upstream.astype(dtype)
    kernels.activation_grad(d, a, z, activation)
    close(d, upstream.astype(dtype) * ref.derivative(z.astype(float), activation), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("first,last", [(0, 13), (0, 6), (6, 13), (4, 4)])
def test_bias_grad_writes_only_its_columns(rng, dtype, accumulate, first, last):
    d = rng.normal(size=(9, 13)).astype(dtype)
    db0 = rng.normal(size=13).astype(dtype)
    db = db0.copy()
    kernels.bias_grad(db, d, first, last, accumulate=accumulate)
    expected = db0.astype(float)
    expected[first:last] = d[:, first:last].astype(float).sum(axis=0) + (
        db0[first:last] if accumulate else 0)
    close(db, expected, dtype, scale=9)
    np.testing.assert_array_equal(np.delete(db, np.s_[first:last]),
                                  np.delete(db0, np.s_[first:last]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n_in,n_out", SHAPES)
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_dense_forward_and_backward(rng, dtype, rows, n_in, n_out, activation):
    X, W, b = (rng.normal(size=s).astype(dtype) for s in [(rows, n_in), (n_in, n_out), (n_out,)])
    z, a = np.empty((rows, n_out), dtype), np.empty((rows, n_out), dtype)
    kernels.dense(z, a, X, W, b, activation)
    z_ref = X.astype(float) @ W + b
    close(a, ref.activate(z_ref, activation), dtype, scale=n_in)

    upstream = rng.normal(size=(rows, n_out)).astype(dtype)
    d, dinp = upstream.copy(), np.empty((rows, n_in), dtype)
    dW, db = np.empty((n_in, n_out), dtype), np.empty(n_out, dtype)
    z_kept = z if activation == "gelu" else a
    kernels.dense_grad(dW, db, d, X, W, a, z_kept, activation, dinp)
    dz = upstream * ref.derivative(z_ref, activation)
    close(db, dz.sum(axis=0), dtype, scale=rows * n_in)
    close(dW, X.T.astype(float) @ dz, dtype, scale=rows * n_in)
    close(dinp, dz @ W.T.astype(float), dtype, scale=rows * n_in)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [2, 3, 8])
def test_dense_backward_shares_make_up_the_whole_gradient(rng, dtype, n_threads):
    """Threads that share a batch each write their own rows of dW, entries of db and columns
    of dinp (as the engine splits them); together they write every entry once, equal to the
    whole product."""
    rows, n_in, n_out = 7, 5, 6
    X, W = rng.normal(size=(rows, n_in)).astype(dtype), rng.normal(size=(n_in, n_out)).astype(dtype)
    a = z = rng.normal(size=(rows, n_out)).astype(dtype)
    upstream = rng.normal(size=(rows, n_out)).astype(dtype)
    dW, db = np.full((n_in, n_out), np.nan, dtype), np.full(n_out, np.nan, dtype)
    dinp = np.full((rows, n_in), np.nan, dtype)
    for t in range(n_threads):
        w = (n_in * t // n_threads, n_in * (t + 1) // n_threads)
        b = (n_out * t // n_threads, n_out * (t + 1) // n_threads)
        before_W, before_b = dW.copy(), db.copy()
        kernels.dense_grad(dW, db, upstream.copy(), X, W, a, z, "identity", dinp, w_range=w,
                            b_range=b)
        np.testing.assert_array_equal(np.delete(dW, np.s_[w[0]:w[1]], axis=0),
                                      np.delete(before_W, np.s_[w[0]:w[1]], axis=0))
        np.testing.assert_array_equal(np.delete(db, np.s_[b[0]:b[1]]),
                                      np.delete(before_b, np.s_[b[0]:b[1]]))
    close(dW, X.T.astype(float) @ upstream, dtype, scale=rows)
    close(db, upstream.sum(axis=0), dtype, scale=rows)
    close(dinp, upstream.astype(float) @ W.T, dtype, scale=n_out)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_accumulates_and_skips_input_gradient(rng, dtype):
    X, W = rng.normal(size=(4, 3)).astype(dtype), rng.normal(size=(3, 2)).astype(dtype)
    a = z = rng.normal(size=(4, 2)).astype(dtype)
    d = rng.normal(size=(4, 2)).astype(dtype)
    dW, db = np.ones((3, 2), dtype), np.ones(2, dtype)
    kernels.dense_grad(dW, db, d.copy(), X, W, a, z, "identity", accumulate=True)
    close(dW, 1 + X.T.astype(float) @ d, dtype, scale=4)
    close(db, 1 + d.sum(axis=0), dtype, scale=4)


def _targets(rng, name, rows, k):
    if name == "softmax_cross_entropy":
        labels = rng.integers(0, k, rows).astype(np.intc)
        return labels, np.eye(k)[labels]
    if name == "sigmoid_cross_entropy":
        return None, rng.uniform(size=(rows, k))
    if name == "poisson":
        return None, rng.poisson(2.0, size=(rows, k)).astype(float)   # counts, zeros among them
    return None, rng.normal(size=(rows, k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("rows,k", [(1, 1), (1, 3), (7, 10), (33, 2)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dense_targets", [False, True])
def test_losses(rng, dtype, name, rows, k, weighted, dense_targets):
    z = (rng.normal(size=(rows, k)) * 4).astype(dtype)
    labels, targets = _targets(rng, name, rows, k)
    if name == "softmax_cross_entropy" and dense_targets:
        targets = rng.dirichlet(np.ones(k), rows)     # soft labels
    weights = rng.uniform(0.1, 2, rows) if weighted else None
    expected_loss, expected_delta = ref.loss_and_delta(name, z.astype(float), targets, weights)
    norm = (weights.sum() if weighted else rows) * (k if LOSSES[name].per_output else 1)
    delta = np.empty_like(z)
    use_labels = labels is not None and not dense_targets
    loss = kernels.loss(name, z, labels if use_labels else None,
                         None if use_labels else targets.astype(dtype),
                         weights.astype(dtype) if weighted else None, dtype(1 / norm), delta)
    assert loss == pytest.approx(expected_loss, rel=RTOL[dtype] * 10, abs=RTOL[dtype])
    close(delta, expected_delta, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0], [-1e4, -1e4, -1e4]], dtype)
    delta = np.empty_like(z)
    loss = kernels.loss("softmax_cross_entropy", z, np.array([1, 2], np.intc), None, None,
                         dtype(0.5), delta)
    assert np.isfinite(loss) and np.isfinite(delta).all()
    assert loss == pytest.approx((2e4 + np.log(3)) / 2, rel=1e-6)


def test_loss_rejects_labels_out_of_range():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError):
        kernels.loss("softmax_cross_entropy", z, np.array([0, 3], np.intc), None, None, 1.0,
                      np.empty_like(z))


# (optimizer, hyper-parameters the kernel reads): every optimizer of cdnn/kinds.py, with the
# variants of its update
OPTIMIZERS = [(name, {}) for name in OPTIMIZER_KINDS] + [
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.8, "nesterov": True}),
    ("adam", {"weight_decay": 0.1}),
    ("adam", {"eps": 1e-3, "eps_inside": True}),     # scikit-learn's Adam
    ("adamw", {"weight_decay": 0.1}),
    ("rmsprop", {"momentum": 0.5, "weight_decay": 0.01}),
]


def _kernel_config(name, hyper):
    kind = OPTIMIZER_KINDS[name]
    return {"kernel": kind.kernel, **hyper, **({"decoupled": True} if name == "adamw" else {})}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,hyper", OPTIMIZERS, ids=[f"{n}{h}" for n, h in OPTIMIZERS])
def test_optimizer_update(rng, dtype, name, hyper):
    n, lr = 23, 0.05
    names = OPTIMIZER_KINDS[name].state
    p, state = rng.normal(size=n), {s: np.zeros(n) for s in names}
    p_k, state_k = p.astype(dtype), {s: np.zeros(n, dtype) for s in names}
    for step in range(1, 4):
        g = rng.normal(size=n)
        p = ref.optimizer_update(name, p, g, state, lr, step, **hyper)
        _network.optimizer_step(_kernel_config(name, hyper), lr, step, p_k, g.astype(dtype),
                                state_k)
        close(p_k, p, dtype)
        for s in names:
            close(state_k[s], state[s], dtype)


def test_optimizer_state_must_be_the_buffers_its_update_reads():
    p, g = np.zeros(4), np.zeros(4)
    adam = _kernel_config("adam", {})
    with pytest.raises(ValueError, match="lacks"):
        _network.optimizer_step(adam, 0.1, 1, p, g, {"m": np.zeros(4)})
    with pytest.raises(ValueError, match="no optimizer keeps a buffer named 'state1'"):
        _network.optimizer_step(adam, 0.1, 1, p, g, {"state1": np.zeros(4)})
    with pytest.raises(ValueError, match="v buffer has 3 elements"):
        _network.optimizer_step(adam, 0.1, 1, p, g, {"m": np.zeros(4), "v": np.zeros(3)})


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_gradient_scale(rng, dtype):
    p, g = rng.normal(size=5).astype(dtype), rng.normal(size=5).astype(dtype)
    expected = p - 0.1 * 0.5 * g
    _network.optimizer_step(_kernel_config("sgd", {}), 0.1, 1, p, g,
                            {"momentum": np.zeros_like(p)}, 0.5)
    close(p, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_masks_scales_and_repeats(rng, dtype):
    a = rng.uniform(1, 2, size=(200, 50)).astype(dtype)
    out = np.empty_like(a)
    kernels.dropout(out, a, 0.3, 7, 11)
    kept = out != 0
    assert 0.27 < 1 - kept.mean() < 0.33
    close(out[kept], a[kept] / 0.7, dtype)
    d = np.ones_like(a)
    kernels.dropout_grad(d, 0.3, 7, 11)        # the same mask, regenerated
    np.testing.assert_array_equal(d != 0, kept)
    again = np.empty_like(a)
    kernels.dropout(again, a, 0.3, 7, 12)      # another step draws another mask
    assert (again != 0).mean() == pytest.approx(0.7, abs=0.03)
    assert not np.array_equal(again != 0, kept)
    # threads that share the rows each draw their columns' part of the same mask
    parts = np.full_like(a, np.nan)
    for columns in [(0, 17), (17, 17), (17, 50)]:
        kernels.dropout(parts, a, 0.3, 7, 11, columns=columns)
    np.testing.assert_array_equal(parts, out)
