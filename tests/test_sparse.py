"""Sparse X (scipy.sparse) at every entry point: the results are the dense path's, in float64,
and malformed input is a clear ValueError before any kernel reads it."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import cdnn
import cdnn._engine
from cdnn._sparse import SparseRows
from cdnn.threads import limit_threads

SIZES = [60, 12, 7, 4]
FORMATS = {
    "csr": lambda X: X,
    "csr_array": sp.csr_array,
    "csr_int64": lambda X: sp.csr_matrix((X.data, X.indices.astype(np.int64),
                                          X.indptr.astype(np.int64)), shape=X.shape),
    "csc": lambda X: X.tocsc(),
    "coo": lambda X: X.tocoo(),
    "lil": lambda X: X.tolil(),
}


def data(n=90, seed=0, density=0.08):
    rng = np.random.default_rng(seed)
    X = sp.random(n, SIZES[0], density=density, format="csr", random_state=seed,
                  data_rvs=lambda k: rng.normal(size=k))
    keep = np.ones(n)
    keep[3] = 0                   # a row without entries
    X = sp.csr_matrix(sp.diags(keep) @ X)
    X.eliminate_zeros()
    return X, rng.integers(0, SIZES[-1], n), rng.uniform(0.5, 2, n)


def net(**kwargs):
    return cdnn.MLP(SIZES, activation=["gelu", "relu"], dtype="float64", seed=0, **kwargs)


def relative(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("fmt", FORMATS)
def test_inference_and_gradients_equal_the_dense_path(fmt):
    X, y, w = data()
    S, D, model = FORMATS[fmt](X), X.toarray(), net(l2=1e-3)
    assert relative(model.forward(S), model.forward(D)) < 1e-12
    assert np.array_equal(model.predict(S), model.predict(D))
    assert relative(model.predict_proba(S), model.predict_proba(D)) < 1e-12
    assert model.evaluate(S, y, w) == pytest.approx(model.evaluate(D, y, w), rel=1e-12)
    loss_s, grad_s = model.loss_and_grad(S, y, w)
    loss_d, grad_d = model.loss_and_grad(D, y, w)
    assert loss_s == pytest.approx(loss_d, rel=1e-12)
    assert relative(grad_s, grad_d) < 1e-10
    one = FORMATS[fmt](X[:1])
    assert relative(model.forward(one), model.forward(D[:1])) < 1e-12             # one row


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("fmt", ["csr", "coo"])
def test_two_epochs_of_training_equal_the_dense_path(monkeypatch, threads, fmt):
    """Every fit option that touches rows: validation data, sample and class weights,
    shuffling, dropout, L2 and clipping; the team shares each batch's gather, first layer and
    scatter (more threads than the last batch has rows, too)."""
    monkeypatch.setattr(cdnn._engine, "MIN_FLOPS_PER_THREAD", 1)   # thread even tiny steps
    X, y, w = data()
    V, v, _ = data(30, seed=1)

    def fit(X, V):
        model = net(dropout=[0.2, 0.0], l2=1e-3)
        trainer = cdnn.Trainer(model, cdnn.Adam(0.01), batch_size=32, clip_norm=1.0, seed=2)
        with limit_threads(threads):
            history = trainer.fit(X, y, epochs=2, validation_data=(V, v), sample_weight=w,
                                  class_weight="balanced", verbose=0)
        return model.params, history.history

    sparse, dense = fit(FORMATS[fmt](X), V), fit(X.toarray(), V.toarray())
    assert relative(sparse[0], dense[0]) < 1e-9
    for key in dense[1]:
        assert sparse[1][key] == pytest.approx(dense[1][key], rel=1e-9)
    assert np.array_equal(sparse[0], fit(FORMATS[fmt](X), V)[0])     # deterministic


def test_validation_split_and_sgd_equal_the_dense_path():
    X, y, _ = data()

    def fit(X):
        model = net()
        history = cdnn.Trainer(model, cdnn.SGD(0.05, momentum=0.9), batch_size=16,
                               seed=3).fit(X, y, epochs=2, validation_split=0.25,
                                           class_weight={0: 2.0}, verbose=0)
        return model.params, history.history["val_loss"]

    (p_s, val_s), (p_d, val_d) = fit(X), fit(X.toarray())
    assert relative(p_s, p_d) < 1e-9 and val_s == pytest.approx(val_d, rel=1e-9)


def test_float32_sparse_trains_like_dense():
    X, y, _ = data(200)
    params = []
    for rows in (X.astype(np.float32), X.toarray()):
        model = cdnn.MLP(SIZES, seed=0)
        cdnn.Trainer(model, cdnn.Adam(0.01), batch_size=32, seed=0).fit(rows, y, epochs=3,
                                                                        verbose=0)
        params.append(model.params)
    assert relative(*params) < 1e-4


def test_unsorted_and_duplicate_indices_sum_like_scipy():
    """Accepted, with scipy's meaning: a duplicate entry adds to its column (toarray())."""
    indptr, indices = np.array([0, 3, 5]), np.array([7, 2, 7, 9, 1])
    values = np.array([1.0, -2.0, 0.5, 3.0, 0.0])       # and an explicit zero
    X = sp.csr_matrix((values, indices, indptr), shape=(2, SIZES[0]))
    assert not X.has_sorted_indices
    model = net()
    assert relative(model.forward(X), model.forward(X.toarray())) < 1e-12
    _, grad = model.loss_and_grad(X, [1, 2])
    assert relative(grad, model.loss_and_grad(X.toarray(), [1, 2])[1]) < 1e-10


def csr(values=(1.0, 2.0), indices=(0, 5), indptr=(0, 1, 2), shape=(2, SIZES[0])):
    """A CSR matrix built without scipy's checks (as a caller's arrays may be)."""
    X = sp.csr_matrix((2, SIZES[0]))
    X.data, X.indices, X.indptr = np.array(values), np.array(indices), np.array(indptr)
    X._shape = shape
    return X


@pytest.mark.parametrize("X, message", [
    (csr(values=(1.0, np.nan)), r"non-finite value \(nan\) at row 1, column 5"),
    (csr(values=(np.inf, 1.0)), r"non-finite value \(inf\) at row 0, column 0"),
    (csr(values=(1e300, 1.0)).astype(np.float64), None),      # fine in float64
    (csr(indices=(0, -3)), r"negative column index \(-3\) in row 1"),
    (csr(indices=(0, SIZES[0])), r"out-of-range column index \(60\) in row 1"),
    (csr(indptr=(0, 2, 1)), r"indptr is not monotonic: it decreases after row 1"),
    (csr(indptr=(1, 1, 2)), r"indptr must start at 0"),
    (csr(indptr=(0, 1, 3)), r"indptr points to 3 stored entries, but X holds 2"),
    (csr(indptr=(0, 2)), r"indptr has 2 entries for 2 rows"),
    (sp.csr_matrix((2, SIZES[0] + 1)), r"X has 61 features per row, the network expects 60"),
    (sp.csr_matrix((0, SIZES[0])), r"X is empty"),
    (sp.coo_matrix(([1.0], ([0], [SIZES[0] + 2])), shape=(1, 70)), r"features per row"),
])
def test_bad_sparse_input_is_a_clear_value_error(X, message):
    model = net()
    if message is None:
        model.forward(X)
        return
    for call in (model.forward, lambda X: model.loss_and_grad(X, [0] * X.shape[0]),
                 lambda X: cdnn.Trainer(model, cdnn.SGD(0.1)).fit(X, [0] * X.shape[0],
                                                                 verbose=0)):
        with pytest.raises(ValueError, match=message):
            call(X)


def test_bad_coo_and_csc_structure_is_caught_before_scipy_converts_it():
    coo = sp.coo_matrix(([1.0], ([0], [3])), shape=(2, SIZES[0]))
    coo.col[0] = -1
    with pytest.raises(ValueError, match=r"negative column index \(-1\)"):
        net().forward(coo)
    csc = sp.csc_matrix(np.eye(2, SIZES[0]))
    csc.indices[1] = 7
    with pytest.raises(ValueError, match=r"out-of-range row index \(7\) in column 1"):
        net().forward(csc)
    with pytest.raises(TypeError, match="y must be a dense array"):
        net().loss_and_grad(sp.csr_matrix(np.eye(2, SIZES[0])), sp.csr_matrix([[1], [0]]))


def test_the_kernels_guard_memory_without_the_python_checks():
    """The native wrappers check a CSR structure before reading it, whatever they are given."""
    model = net()
    out = np.empty((2, SIZES[-1]))
    ws = np.empty(100 * model.engine.network.row_width)
    for indptr, indices in [((0, 1, 2), (0, 60)), ((0, 2, 1), (0, 1)), ((0, 1, 3), (0, 1))]:
        rows = SparseRows(np.array(indptr, np.intp), np.array(indices, np.intc),
                          np.ones(2), SIZES[0])
        with pytest.raises(ValueError, match="not well-formed CSR"):
            model.engine.network.forward(model.params, rows, out, ws)


def test_sparse_rows_bound_any_batch_of_a_permutation():
    X, _, _ = data(200, density=0.2)
    rows = cdnn._sparse.as_sparse_rows(X, np.float64, SIZES[0])
    counts = np.diff(X.indptr)
    bound = rows.batch_entries_bound(17)
    assert bound == np.sort(counts)[-17:].sum()
    order = np.argsort(-counts)        # the fullest rows first: the first batch meets it
    assert counts[order[:17]].sum() == bound
    view = rows[50:120]
    assert len(view) == 70 and (view.to_scipy() != X[50:120]).nnz == 0


# --- scikit-learn estimators and the CLI ---------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")    # ConvergenceWarning: 5 iterations
@pytest.mark.parametrize("solver, early_stopping", [("adam", False), ("sgd", True),
                                                    ("lbfgs", False)])
def test_estimators_on_sparse_equal_dense(solver, early_stopping):
    pytest.importorskip("sklearn")
    from cdnn.sklearn import MLPClassifier, MLPRegressor
    X, y, w = data()
    for cls, target in ((MLPClassifier, y), (MLPRegressor, w)):
        kwargs = dict(hidden_layer_sizes=(9,), solver=solver, max_iter=5, dtype="float64",
                      random_state=0, early_stopping=early_stopping)
        sparse = cls(**kwargs).fit(X.tocsc(), target, sample_weight=w)
        dense = cls(**kwargs).fit(X.toarray(), target, sample_weight=w)
        assert relative(sparse._net.params, dense._net.params) < 1e-9
        if cls is MLPClassifier:
            assert np.array_equal(sparse.predict(X), dense.predict(X.toarray()))
        else:
            assert relative(sparse.predict(X), dense.predict(X.toarray())) < 1e-9
        assert sparse.score(X, target) == pytest.approx(dense.score(X.toarray(), target))
    model = MLPClassifier(hidden_layer_sizes=(9,), dtype="float64", random_state=0)
    model.partial_fit(X, y, classes=np.arange(SIZES[-1]))
    assert model.predict_proba(sp.coo_array(X)).shape == (X.shape[0], SIZES[-1])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_scikit_learn_sparse_estimator_checks():
    pytest.importorskip("sklearn")
    from sklearn.utils.estimator_checks import (check_estimator_sparse_array,
                                                check_estimator_sparse_matrix)
    from cdnn.sklearn import MLPClassifier, MLPRegressor
    for estimator in (MLPClassifier(max_iter=20), MLPRegressor(max_iter=20),
                      MLPClassifier(solver="lbfgs", max_iter=20)):
        check_estimator_sparse_array(type(estimator).__name__, estimator)
        check_estimator_sparse_matrix(type(estimator).__name__, estimator)


def test_cli_trains_and_predicts_from_save_npz_files(tmp_path, capsys):
    from cdnn.cli import main
    X, y, _ = data(120)
    sp.save_npz(tmp_path / "X.npz", X.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    model = tmp_path / "model.safetensors"
    assert main(["train", "--data", str(tmp_path / "X.npz"), str(tmp_path / "y.npy"),
                 "--epochs", "2", "--verbose", "0", "--save", str(model)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["predict", str(model), str(tmp_path / "X.npz"), "-o",
                 str(tmp_path / "p.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "p.npy"), cdnn.load(model).predict(X.toarray()))
    (tmp_path / "bad.npz").write_bytes(b"not an archive")
    assert main(["predict", str(model), str(tmp_path / "bad.npz")]) == 1
    assert "not a sparse matrix written by scipy.sparse.save_npz" in capsys.readouterr().err


# --- the opt-in lazy update -------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
def test_lazy_update_is_exact_for_plain_sgd(monkeypatch, threads):
    """Without momentum or decay an untouched row's update is zero: lazy and exact agree
    (clipping's norm included, which the lazy step takes over the touched rows only)."""
    monkeypatch.setattr(cdnn._engine, "MIN_FLOPS_PER_THREAD", 1)
    X, y, w = data()
    params = []
    for lazy in (False, True):
        model = net()
        trainer = cdnn.Trainer(model, cdnn.SGD(0.1), batch_size=16, clip_norm=0.5, seed=1,
                               lazy_update=lazy)
        with limit_threads(threads):
            trainer.fit(X, y, sample_weight=w, epochs=2, verbose=0)
        params.append(model.params)
    assert relative(params[1], params[0]) < 1e-12


def test_lazy_adam_updates_only_the_rows_the_batch_touches():
    """Against a reference: Adam on each batch's gradient, skipping W₁'s rows whose column
    has no entry in the batch (their moments frozen), as PyTorch's SparseAdam."""
    X, y, _ = data()
    model = net()
    cdnn.Trainer(model, cdnn.Adam(0.01), batch_size=16, lazy_update=True).fit(
        X, y, epochs=2, shuffle=False, verbose=0)
    ref = net()
    m, v, n_w1 = np.zeros_like(ref.params), np.zeros_like(ref.params), SIZES[0] * SIZES[1]
    step = 0
    for _ in range(2):
        for first in range(0, X.shape[0], 16):
            rows = X[first:first + 16]
            _, g = ref.loss_and_grad(rows, y[first:first + 16])
            step += 1
            skip = np.zeros(SIZES[0], bool)
            skip[np.setdiff1d(np.arange(SIZES[0]), rows.indices)] = True
            live = ~np.concatenate([np.repeat(skip, SIZES[1]),
                                    np.zeros(ref.params.size - n_w1, bool)])
            m[live] = 0.9 * m[live] + 0.1 * g[live]
            v[live] = 0.999 * v[live] + 0.001 * g[live] ** 2
            ref.params[live] -= (0.01 / (1 - 0.9 ** step) * m[live]
                                 / (np.sqrt(v[live]) / np.sqrt(1 - 0.999 ** step) + 1e-8))
    assert relative(model.params, ref.params) < 1e-9


def test_lazy_update_refuses_dense_rows_and_l2():
    X, y, _ = data()
    with pytest.raises(ValueError, match="lazy update is for sparse X"):
        cdnn.Trainer(net(), cdnn.Adam(), lazy_update=True).fit(X.toarray(), y, verbose=0)
    with pytest.raises(ValueError, match="use the optimizer's weight_decay"):
        cdnn.Trainer(net(l2=0.1), cdnn.Adam(), lazy_update=True).fit(X, y, verbose=0)


def test_a_failed_lazy_step_leaves_the_last_finite_parameters():
    """Diverging (float32, a huge learning rate), the lazy step restores what it overwrote:
    the parameters are the exact path's after the same failure (plain SGD: one semantics)."""
    X, y, _ = data()
    params = []
    for lazy in (False, True):
        model = cdnn.MLP(SIZES, seed=0)
        with pytest.raises(FloatingPointError, match="diverged"):
            cdnn.Trainer(model, cdnn.SGD(1e36), batch_size=16, lazy_update=lazy).fit(
                X, y, epochs=3, verbose=0)
        params.append(model.params)
    assert np.isfinite(params[1]).all() and np.array_equal(params[0], params[1])


# --- the engine's own arrays, and the memory a conversion takes (issue 23 #1, #6, #12) ------

SPOILED_UNDER_THE_ENGINE = r"""
import threading
import numpy as np, scipy.sparse as sp, cdnn

X = sp.random(400, 60, density=0.1, format="csr", random_state=0, dtype=np.float64)
y = np.random.default_rng(0).integers(0, 3, 400)

class Spoil(cdnn.Callback):        # the caller's structure changes while fit holds the rows
    def on_epoch_end(self, epoch, logs=None):
        X.indices[:] = 2**30
        X.indptr[1:] = X.indptr[-1]

results = []
for spoil in (False, True):       # the spoiled run last
    net = cdnn.MLP([60, 16, 3], dtype="float64", seed=1)
    cdnn.Trainer(net, cdnn.SGD(0.1), batch_size=20).fit(
        X, y, epochs=3, verbose=0, callbacks=[Spoil()] if spoil else [])
    results.append(net.params)
assert np.array_equal(*results)
print("fit ok")

X = sp.random(4000, 60, density=0.1, format="csr", random_state=0, dtype=np.float64)
good, expected, done = X.indices.copy(), net.predict(X), threading.Event()

def spoil():                        # another thread, during predict
    while not done.is_set():
        X.indices[:] = 2**30
        X.indices[:] = good

thread = threading.Thread(target=spoil)
thread.start()
outcomes = set()
for _ in range(200):
    try:
        outcomes.add(bool(np.array_equal(net.predict(X), expected)))
    except ValueError as e:         # the copy was taken while spoiled: named, never read
        assert "out-of-range column index (1073741824)" in str(e), e
        outcomes.add("refused")
done.set()
thread.join()
assert False not in outcomes, outcomes
print("predict ok")

L = sp.lil_matrix((2, 60))          # scipy's tocsr does not check LIL rows
L.rows[0], L.data[0] = [10**6], [1.0]
try:
    net.predict(L)
except ValueError as e:
    assert "out-of-range column index (1000000) in row 0" in str(e), e
    print("lil ok")
"""


def test_the_engine_reads_its_own_copy_of_the_sparse_structure():
    """Issue 23 #1: a callback or another thread that changed X.indices crashed the kernels,
    which read the caller's arrays as views (SIGSEGV: so in a subprocess)."""
    result = subprocess.run([sys.executable, "-c", SPOILED_UNDER_THE_ENGINE],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["fit", "ok", "predict", "ok", "lil", "ok"], result.stdout


def test_other_formats_predict_as_csr_does():
    X = sp.random(30, SIZES[0], density=0.2, format="csr", random_state=1)
    model = net()
    expected = model.predict(X)
    for fmt in ("lil", "dia", "dok", "coo", "csc", "bsr"):
        np.testing.assert_array_equal(model.predict(X.asformat(fmt)), expected, err_msg=fmt)


PREDICT_UNDER_RLIMIT = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    "from cdnn.cli import main; sys.exit(main(sys.argv[1:]))")


def test_a_tiny_file_of_huge_shape_is_refused_before_conversion(tmp_path):
    """Issue 23 #6 and #12: a 1 KB DIA .npz of 2^31 × 4 took 16 GiB of CSR offsets (10.6 GB RSS
    and growing, when nothing limits it); a LIL .npz was a NotImplementedError traceback. Under
    RLIMIT_AS a regression fails fast, instead of taking the machine's memory."""
    cdnn.MLP([4, 3]).save(tmp_path / "m.safetensors")
    sp.save_npz(tmp_path / "dia.npz", sp.dia_matrix((np.ones((1, 4)), [0]), shape=(2**31, 4)))
    np.savez(tmp_path / "lil.npz", format=b"lil", shape=(2, 4), data=np.ones(1))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    errors = []
    for name in ("dia.npz", "lil.npz"):
        result = subprocess.run(
            [sys.executable, "-c", PREDICT_UNDER_RLIMIT, "predict",
             str(tmp_path / "m.safetensors"), str(tmp_path / name)],
            capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors.append(result.stderr)
    assert ("X (DIA, 2147483648 × 4 with 4 stored values) takes 16.0 GiB as the CSR rows cdnn "
            "reads, more than the") in errors[0]
    assert "lil.npz: not a sparse matrix written by scipy.sparse.save_npz" in errors[1]
    assert "format lil" in errors[1]
