"""The MLP model: parameter layout, initialisation, symmetry, inference, input conversion."""
import numpy as np
import pytest

import cdnn
import reference as ref


def test_weights_and_biases_are_views_into_params():
    net = cdnn.MLP([5, 4, 3], seed=0)
    assert net.params.ndim == 1 and net.params.size == 5 * 4 + 4 + 4 * 3 + 3
    assert [W.shape for W in net.weights] == [(5, 4), (4, 3)]
    assert [b.shape for b in net.biases] == [(4,), (3,)]
    net.params[...] = np.arange(net.params.size)
    assert net.weights[0][0, 1] == 1 and net.biases[0][0] == 20 and net.weights[1][0, 0] == 24
    net.weights[1][...] = -1
    assert (net.params[24:36] == -1).all()
    for a in net.weights + net.biases:
        assert np.shares_memory(a, net.params)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_numpy(rng, dtype):
    net = cdnn.MLP([6, 7, 5, 3], activation=["tanh", "gelu"], dtype=dtype, seed=1)
    net.params += rng.normal(scale=0.1, size=net.params.size).astype(dtype)
    X = rng.normal(size=(11, 6))
    layers = ref.forward([W.astype(float) for W in net.weights],
                         [b.astype(float) for b in net.biases], X, ["tanh", "gelu", "identity"])
    logits = layers[-1][1]
    tol = 1e-5 if dtype == "float32" else 1e-12
    out = net.forward(X)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_allclose(out, logits, rtol=tol, atol=tol)
    np.testing.assert_allclose(net.predict_proba(X), ref.softmax(logits, axis=1), rtol=tol,
                               atol=tol)
    np.testing.assert_array_equal(net.predict(X), logits.argmax(axis=1))


@pytest.mark.parametrize("init", ["he_uniform", "he_normal", "glorot_uniform", "glorot_normal",
                                  "lecun_normal"])
def test_initialisers_are_seeded_and_scaled(init):
    a, b, c = (cdnn.MLP([400, 300, 10], init=init, seed=s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    assert all((bias == 0).all() for bias in a.biases)
    fan_in, fan_out = 400, 300
    expected_std = {"he_uniform": np.sqrt(2 / fan_in), "he_normal": np.sqrt(2 / fan_in),
                    "glorot_uniform": np.sqrt(2 / (fan_in + fan_out)),
                    "glorot_normal": np.sqrt(2 / (fan_in + fan_out)),
                    "lecun_normal": np.sqrt(1 / fan_in)}[init]
    assert a.weights[0].std() == pytest.approx(expected_std, rel=0.03)


def test_default_init_follows_the_activation():
    assert cdnn.MLP([3, 4, 2], activation="relu").init == "he_uniform"
    assert cdnn.MLP([3, 4, 2], activation="tanh").init == "glorot_uniform"


def _distinct_columns(W):
    return len(np.unique(np.round(W, 6), axis=1).T)


def test_zero_init_never_breaks_symmetry(rng):
    """With all-zero weights every hidden unit computes the same function and gets the same
    gradient, so the units stay identical however long the network trains."""
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 3, 200)
    net = cdnn.MLP([6, 8, 8, 3], activation="tanh", init="zeros", dtype="float64", seed=0)
    cdnn.Trainer(net, cdnn.SGD(lr=0.1, momentum=0.9), batch_size=20).fit(X, y, epochs=20,
                                                                         verbose=0)
    for W in net.weights[1:]:       # the units of each hidden layer feed the next identically
        assert np.allclose(W, W[:1, :]), "hidden units diverged from zero init"
    for W in net.weights[:-1]:      # every column (unit) of a hidden layer is the same
        assert _distinct_columns(W) == 1


def test_random_init_breaks_symmetry(rng):
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 3, 200)
    net = cdnn.MLP([6, 8, 8, 3], activation="tanh", seed=0)
    cdnn.Trainer(net, cdnn.SGD(lr=0.1, momentum=0.9), batch_size=20).fit(X, y, epochs=2,
                                                                         verbose=0)
    for W in net.weights[:-1]:
        assert _distinct_columns(W) == W.shape[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_contiguous_fortran_and_integer_inputs_are_converted(rng, dtype):
    net = cdnn.MLP([5, 6, 3], dtype=dtype, seed=2)
    X = rng.normal(size=(8, 10))
    expected = net.forward(np.ascontiguousarray(X[:, ::2]))
    np.testing.assert_array_equal(net.forward(X[:, ::2]), expected)
    np.testing.assert_array_equal(net.forward(np.asfortranarray(X[:, ::2])), expected)
    Xi = rng.integers(0, 5, size=(8, 5))
    np.testing.assert_array_equal(net.forward(Xi), net.forward(Xi.astype(dtype)))
    y = rng.integers(0, 3, 8)
    loss, grad = net.loss_and_grad(np.asfortranarray(X[:, ::2]), y[:, None])
    loss_c, grad_c = net.loss_and_grad(np.ascontiguousarray(X[:, ::2]), y)
    assert loss == loss_c
    np.testing.assert_array_equal(grad, grad_c)


def test_predict_shapes_for_each_loss(rng):
    X = rng.normal(size=(6, 4))
    assert cdnn.MLP([4, 5, 3], seed=0).predict(X).shape == (6,)
    binary = cdnn.MLP([4, 5, 1], loss="sigmoid_cross_entropy", seed=0)
    assert set(binary.predict(X)) <= {0, 1} and binary.predict(X).shape == (6,)
    assert binary.predict_proba(X).shape == (6, 1)
    multilabel = cdnn.MLP([4, 5, 3], loss="sigmoid_cross_entropy", seed=0)
    assert multilabel.predict(X).shape == (6, 3)
    regressor = cdnn.MLP([4, 5, 2], loss="mse", seed=0)
    np.testing.assert_array_equal(regressor.predict(X), regressor.forward(X))
    with pytest.raises(ValueError, match="regressor"):
        regressor.predict_proba(X)


def test_poisson_predicts_the_mean_exp_output_and_takes_counts(rng):
    net = cdnn.MLP([4, 5, 2], loss="poisson", dtype="float64", seed=0)
    X, counts = rng.normal(size=(6, 4)), rng.poisson(3.0, size=(6, 2))
    np.testing.assert_allclose(net.predict(X), np.exp(net.forward(X)))
    mu = np.exp(net.forward(X))     # the mean half deviance, as scikit-learn's poisson loss
    deviance = np.where(counts > 0, counts * np.log(np.maximum(counts, 1) / mu), 0) - counts + mu
    assert net.evaluate(X, counts) == {"loss": pytest.approx(deviance.mean(), rel=1e-12)}
    with pytest.raises(ValueError, match="≥ 0"):
        net.loss_and_grad(X, -counts)


@pytest.mark.parametrize("threads", [2, 3, 5])
@pytest.mark.parametrize("sizes", [[6, 7, 5, 3], [6, 2], [4, 600, 1]])
def test_threads_sharing_each_layers_units_compute_every_output(rng, threads, sizes):
    """With share_units every thread takes every row and a share of each layer's units (some
    threads none, when a layer has fewer units than threads), in chunks of the workspace."""
    net = cdnn.MLP(sizes, activation="gelu", dtype="float64", seed=1)
    X = rng.normal(size=(13, sizes[0]))
    layers = ref.forward([W.astype(float) for W in net.weights],
                         [b.astype(float) for b in net.biases], X,
                         ["gelu"] * (len(sizes) - 2) + ["identity"])
    for chunk in (13, 4):
        out = np.full((13, sizes[-1]), np.nan)
        net.engine.network.forward(net.params, X, out, np.empty(chunk * net.engine.network.row_width),
                            threads, True)
        np.testing.assert_allclose(out, layers[-1][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 20])
def test_a_few_rows_of_a_large_network_match_numpy(rng, rows):
    # enough weights × rows that forward shares each layer's units between the threads
    net = cdnn.MLP([300, 512, 10], dtype="float64", seed=2)
    X = rng.normal(size=(rows, 300))
    logits = ref.forward(net.weights, net.biases, X, ["relu", "identity"])[-1][1]
    with cdnn.limit_threads(2):
        np.testing.assert_allclose(net.forward(X), logits, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes, activation", [([6, 2], "relu"), ([6, 7, 5, 3], "gelu"),
                                               ([9, 600, 4], "tanh")])
def test_a_ready_row_takes_the_short_path_to_the_same_outputs(rng, dtype, sizes, activation):
    net = cdnn.MLP(sizes, activation=activation, dtype=dtype, seed=3, dropout=0.5)
    net.params += rng.normal(scale=0.1, size=net.params.size).astype(dtype)
    x = rng.normal(size=(1, sizes[0])).astype(dtype)
    out = net.engine.network.forward_row(net.params, x)
    assert out.shape == (1, sizes[-1]) and out.dtype == np.dtype(dtype)
    general = np.full_like(out, np.nan)
    net.engine.network.forward(net.params, x, general, np.empty(net.engine.network.row_width, dtype))
    np.testing.assert_array_equal(out, general)      # the same kernels, dropout off
    logits = ref.forward(net.weights, net.biases, x.astype(float),
                         [activation] * (len(sizes) - 2) + ["identity"])[-1][1]
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, logits, rtol=tol, atol=tol)


def _unaligned_row(n, dtype):
    buf = np.zeros(n * np.dtype(dtype).itemsize + 1, np.uint8)
    row = buf[1:].view(dtype).reshape(1, n)
    assert not row.flags.aligned
    return row


ROWS_THE_SHORT_PATH_DECLINES = {
    "float64 row, float32 net": lambda x: x.astype(np.float64),
    "two rows": lambda x: np.vstack([x, x]),
    "strided": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "big-endian": lambda x: x.astype(">f4"),
    "unaligned": lambda x: _unaligned_row(x.shape[1], np.float32),
    "subclass": lambda x: x.view(type("Subclass", (np.ndarray,), {})),
    "list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("case", ROWS_THE_SHORT_PATH_DECLINES)
def test_rows_that_are_not_ready_take_the_general_path(rng, case):
    net = cdnn.MLP([5, 4, 3], seed=0)
    x = rng.normal(size=(1, 5)).astype(np.float32)
    X = ROWS_THE_SHORT_PATH_DECLINES[case](x)
    if case == "unaligned":
        X[...] = x
    assert net.engine.network.forward_row(net.params, X) is None
    expected = net.forward(np.asarray(X, dtype=np.float32))
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-6)


@pytest.mark.parametrize("bad, match", [(np.nan, r"\(nan\) at row 0, column 2"),
                                        (-np.inf, r"\(-inf\) at row 0, column 2")])
def test_a_non_finite_row_is_named_not_predicted(bad, match):
    net = cdnn.MLP([5, 4, 3], seed=0)
    x = np.ones((1, 5), np.float32)
    x[0, 2] = bad
    assert net.engine.network.forward_row(net.params, x) is None
    with pytest.raises(ValueError, match=match):
        net.predict(x)


def test_the_short_path_checks_its_parameters():
    net = cdnn.MLP([5, 4, 3], seed=0)
    x = np.ones((1, 5), np.float32)
    for params in (net.params[:-1], net.params[::2], np.vstack([net.params, net.params])):
        with pytest.raises(ValueError, match="params"):
            net.engine.network.forward_row(params, x)


def test_predict_in_chunks_matches_one_call(rng):
    net = cdnn.MLP([3, 4, 2], dtype="float64", seed=0)
    X = rng.normal(size=(2500, 3))      # more rows than one kernel call takes
    np.testing.assert_allclose(net.forward(X)[-5:], net.forward(X[-5:]), rtol=1e-12)


def test_sequential_builds_per_layer_activations():
    net = cdnn.Sequential([cdnn.Dense(8, "relu"), cdnn.Dense(6, "tanh", dropout=0.2),
                           cdnn.Dense(3)], input_dim=5, seed=0)
    assert net.layer_sizes == (5, 8, 6, 3)
    assert net.activations == ("relu", "tanh") and net.dropout == (0.0, 0.2)
    with pytest.raises(ValueError, match="output"):
        cdnn.Sequential([cdnn.Dense(8, "relu")], input_dim=5)


def test_pickle_round_trip(rng):
    import pickle
    net = cdnn.MLP([4, 5, 3], seed=0)
    clone = pickle.loads(pickle.dumps(net))
    X = rng.normal(size=(3, 4))
    np.testing.assert_array_equal(clone.forward(X), net.forward(X))
    assert not np.shares_memory(clone.params, net.params)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_rows_are_checked_for_non_finite_values_chunk_by_chunk(threads):
    # predict checks X in its kernel, chunk by chunk: the chunk that holds the NaN gets NaN
    # outputs (and only it), and predict names the value
    net = cdnn.MLP([6, 5, 3], seed=0)
    X = np.random.default_rng(0).random((3000, 6), dtype=np.float32)
    clean = net.forward(X)
    X[2500, 4] = np.nan
    out = np.empty_like(clean)
    workspace = np.empty(threads * 100 * net.engine.network.row_width, np.float32)
    net.engine.network.forward(net.params, X, out, workspace, threads)  # chunks of 100 rows
    bad = ~np.isfinite(out).all(axis=1)
    assert bad[2500] and bad.sum() == 100
    np.testing.assert_array_equal(out[~bad], clean[~bad])
    with cdnn.limit_threads(threads), pytest.raises(ValueError,
                                                    match=r"\(nan\) at row 2500, column 4"):
        net.predict(X)
