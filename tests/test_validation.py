"""Bad input at every public entry point becomes a ValueError or TypeError that names the
problem, before any kernel runs; inputs that are merely unusual are converted."""
import re

import numpy as np
import pytest
import scipy.sparse

import cdnn
from cdnn import kinds
from cdnn.network import ACTIVATIONS

N_IN, N_CLASSES = 4, 3
OPTIMIZERS = [cdnn.optim.class_of(kind) for kind in kinds.OPTIMIZERS.values()]


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, N_IN)), rng.integers(0, N_CLASSES, 20)


def classifier(**kwargs):
    return cdnn.MLP([N_IN, 8, N_CLASSES], seed=0, **kwargs)


def regressor(n_out=1):
    return cdnn.MLP([N_IN, 8, n_out], loss="mse", seed=0)


# --- constructors -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"layer_sizes": [4, 0, 3]}, ValueError, r"hidden layer 1\) must be at least 1"),
    ({"layer_sizes": [4, -8, 3]}, ValueError, r"hidden layer 1\) must be at least 1"),
    ({"layer_sizes": [4, 2.5, 3]}, TypeError, r"hidden layer 1\) must be an integer"),
    ({"layer_sizes": [4, 8.0, 3]}, TypeError, r"hidden layer 1\) must be an integer"),
    ({"layer_sizes": [4, "8", 3]}, TypeError, r"hidden layer 1\) must be an integer"),
    ({"layer_sizes": [4, True, 3]}, TypeError, r"hidden layer 1\) must be an integer"),
    ({"layer_sizes": [4, 2**40, 3]}, ValueError, r"hidden layer 1\) must be at most"),
    ({"layer_sizes": [4]}, ValueError, "at least an input and an output"),
    ({"layer_sizes": 4}, TypeError, "list of layer widths"),
    ({"layer_sizes": "4,8,3"}, TypeError, "list of layer widths"),
    ({"layer_sizes": [4, 8, 3], "activation": "rleu"}, ValueError,
     "unknown activation 'rleu'; choose one of: .*gelu.*relu"),
    ({"layer_sizes": [4, 8, 3], "activation": None}, ValueError, "unknown activation None"),
    ({"layer_sizes": [4, 8, 8, 3], "activation": ["relu"]}, ValueError,
     "activation has 1 entries for 2 hidden layers"),
    ({"layer_sizes": [4, 8, 3], "loss": "hinge"}, ValueError,
     "unknown loss 'hinge'; choose one of: .*mean_squared_error.*softmax_cross_entropy"),
    ({"layer_sizes": [4, 8, 3], "init": "xavier"}, ValueError,
     "unknown init 'xavier'; choose one of: .*glorot_uniform.*he_normal"),
    ({"layer_sizes": [4, 8, 3], "dtype": "float16"}, ValueError, "choose float32 or float64"),
    ({"layer_sizes": [4, 8, 3], "dtype": "int"}, ValueError, "choose float32 or float64"),
    ({"layer_sizes": [4, 8, 3], "seed": -1}, ValueError, "seed must be at least 0"),
    ({"layer_sizes": [4, 8, 3], "seed": 1.5}, TypeError, "seed must be an integer"),
    ({"layer_sizes": [4, 8, 3], "dropout": 1.0}, ValueError, "dropout must be <"),
    ({"layer_sizes": [4, 8, 3], "dropout": -0.1}, ValueError, "dropout must be ≥"),
    ({"layer_sizes": [4, 8, 3], "dropout": float("nan")}, ValueError, "dropout must be finite"),
    ({"layer_sizes": [4, 8, 3], "l2": -1.0}, ValueError, "l2 must be ≥"),
    ({"layer_sizes": [4, 8, 3], "l2": float("inf")}, ValueError, "l2 must be finite"),
])
def test_mlp_constructor_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        cdnn.MLP(**kwargs)


def test_every_activation_name_is_listed():
    with pytest.raises(ValueError) as info:
        cdnn.MLP([2, 2, 2], activation="nope")
    assert all(name in str(info.value) for name in ACTIVATIONS)


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("lr, error, match", [
    (0.0, ValueError, "lr must be >"), (-0.1, ValueError, "lr must be >"),
    (float("nan"), ValueError, "lr must be finite"), (float("inf"), ValueError, "lr must be finite"),
    ("0.1", TypeError, "lr must be a real number"), (None, TypeError, "lr must be a real number"),
])
def test_optimizers_reject_bad_learning_rates(cls, lr, error, match):
    with pytest.raises(error, match=match):
        cls(lr=lr)


@pytest.mark.parametrize("make, error, match", [
    (lambda: cdnn.SGD(lr=0.1, momentum=-0.5), ValueError, "momentum must be ≥"),
    (lambda: cdnn.SGD(lr=0.1, nesterov=True), ValueError, "Nesterov momentum requires"),
    (lambda: cdnn.Adam(betas=(0.9, 1.0)), ValueError, "betas must be <"),
    (lambda: cdnn.Adam(betas=(0.9,)), ValueError, "betas must be a pair"),
    (lambda: cdnn.Adam(eps=float("nan")), ValueError, "eps must be finite"),
    (lambda: cdnn.AdamW(weight_decay=-1), ValueError, "weight_decay must be ≥"),
    (lambda: cdnn.RMSprop(alpha=1.5), ValueError, "alpha must be ≤"),
])
def test_optimizers_reject_bad_hyperparameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("kwargs, error, match", [
    ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ({"batch_size": -32}, ValueError, "batch_size must be at least 1"),
    ({"batch_size": 32.0}, TypeError, "batch_size must be an integer"),
    ({"batch_size": None}, TypeError, "batch_size must be an integer"),
    ({"clip_norm": 0.0}, ValueError, "clip_norm must be >"),
    ({"seed": -3}, ValueError, "seed must be at least 0"),
])
def test_trainer_constructor_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        cdnn.Trainer(classifier(), cdnn.SGD(lr=0.1), **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", None, cdnn.Adam])
def test_trainer_names_the_valid_optimizers(optimizer):
    with pytest.raises(TypeError, match=r"cdnn optimizer \(cdnn.SGD, cdnn.Adam, "
                                        r"cdnn.AdamW or cdnn.RMSprop\)"):
        cdnn.Trainer(classifier(), optimizer)


def test_trainer_needs_an_mlp():
    with pytest.raises(TypeError, match="net must be a cdnn.MLP"):
        cdnn.Trainer("net", cdnn.SGD(lr=0.1))


# --- arrays: X ----------------------------------------------------------------------------------

def entry_points(net, X, y):
    """Every public call that takes X (and y where it needs one), as (name, thunk)."""
    trainer = cdnn.Trainer(net, cdnn.SGD(lr=0.1), batch_size=4)
    return {
        "forward": lambda: net.forward(X),
        "predict": lambda: net.predict(X),
        "predict_proba": lambda: net.predict_proba(X),
        "evaluate": lambda: net.evaluate(X, y),
        "loss_and_grad": lambda: net.loss_and_grad(X, y),
        "fit": lambda: trainer.fit(X, y, epochs=1, verbose=0),
        "fit validation_data": lambda: trainer.fit(GOOD_X, GOOD_Y, epochs=1, verbose=0,
                                                   validation_data=(X, y)),
    }


GOOD_X = np.random.default_rng(5).normal(size=(10, N_IN))
GOOD_Y = np.arange(10) % N_CLASSES
ENTRY_POINTS = ["forward", "predict", "predict_proba", "evaluate", "loss_and_grad", "fit",
                "fit validation_data"]


def bad_X(case):
    X = GOOD_X.copy()
    if case == "nan":
        X[3, 2] = np.nan
    elif case == "inf":
        X[7, 0] = -np.inf
    elif case == "overflow":
        X[1, 1] = 1e39   # finite in float64, not in the network's float32
    elif case == "features":
        X = X[:, :3]
    elif case == "empty":
        X = X[:0]
    elif case == "1-D":
        X = X[0]
    elif case == "3-D":
        X = X[None]
    elif case == "strings":
        X = X.astype(str)
    elif case == "object":
        X = X.astype(object)
    elif case == "complex":
        X = X + 1j
    elif case == "sparse nan":      # sparse X is accepted: its bad values are named as dense
        X = scipy.sparse.csr_matrix(bad_X("nan"))
    elif case == "sparse array features":
        X = scipy.sparse.csr_array(bad_X("features"))
    elif case == "None":
        X = None
    return X


X_CASES = [
    ("nan", ValueError, r"X holds a non-finite value \(nan\) at row 3, column 2"),
    ("inf", ValueError, r"X holds a non-finite value \(-inf\) at row 7, column 0"),
    ("overflow", ValueError, r"X holds 1e\+39 at row 1, column 1, too large for float32"),
    ("features", ValueError, "X has 3 features per row, the network expects 4"),
    ("empty", ValueError, "X is empty"),
    ("1-D", ValueError, r"X must be 2-D, got shape \(4,\).*reshape\(1, -1\)"),
    ("3-D", ValueError, r"X must be 2-D, got shape \(1, 10, 4\)"),
    ("strings", TypeError, "X must hold numbers, got dtype <U"),
    ("object", TypeError, "X must hold numbers, got dtype object"),
    ("complex", TypeError, "X must hold numbers, got dtype complex128"),
    ("sparse nan", ValueError, r"X holds a non-finite value \(nan\) at row 3, column 2"),
    ("sparse array features", ValueError, "X has 3 features per row, the network expects 4"),
    ("None", TypeError, "X must hold numbers, got dtype object"),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case, error, match", X_CASES, ids=[c[0] for c in X_CASES])
def test_bad_X_is_rejected_everywhere(entry, case, error, match):
    net = classifier()
    before = net.params.copy()
    with pytest.raises(error, match=match):
        entry_points(net, bad_X(case), GOOD_Y)[entry]()
    assert np.array_equal(net.params, before)   # rejected before any training step


# --- arrays: y ----------------------------------------------------------------------------------

Y_CASES = [   # for a 3-class softmax classifier and the 10 rows of GOOD_X
    ("length", np.arange(9) % 3, ValueError, "X has 10 rows but y has 9"),
    ("empty", np.array([], dtype=int), ValueError, "y is empty"),
    ("nan", np.where(np.arange(10) == 4, np.nan, 1.0), ValueError,
     r"y holds a non-finite value \(nan\) at row 4"),
    ("out of range", np.where(np.arange(10) == 6, 3, 0), ValueError,
     "y holds label 3, outside 0..2"),
    ("negative", np.where(np.arange(10) == 2, -1, 0), ValueError, "y holds label -1, outside 0..2"),
    ("continuous", np.linspace(0, 2, 10), ValueError,
     r"y holds a non-integer value \(0.222222\) at row 1; class labels must be integers 0..2"),
    ("strings", np.array(["a", "b"] * 5), TypeError, "y must hold class indices"),
    ("2-D", np.zeros((10, 2)), ValueError,
     r"y must be 1-D class indices \(or one-hot rows of 3 columns\), got shape \(10, 2\)"),
    ("3-D", np.zeros((10, 3, 1)), ValueError, "y must be"),
    ("sparse", scipy.sparse.csr_matrix(np.ones((10, 1))), TypeError,
     r"y is a sparse matrix.*y.toarray\(\)"),
    ("None", None, TypeError, "y must hold class indices"),
]


@pytest.mark.parametrize("entry", ["evaluate", "loss_and_grad", "fit", "fit validation_data"])
@pytest.mark.parametrize("case, y, error, match", Y_CASES, ids=[c[0] for c in Y_CASES])
def test_bad_labels_are_rejected_everywhere(entry, case, y, error, match):
    net = classifier()
    before = net.params.copy()
    with pytest.raises(error, match=match):
        entry_points(net, GOOD_X, y)[entry]()
    assert np.array_equal(net.params, before)


REGRESSION_Y_CASES = [
    ("nan", np.where(np.arange(10) == 5, np.nan, 0.5), ValueError,
     r"y holds a non-finite value \(nan\) at row 5"),
    ("inf", np.where(np.arange(10) == 0, np.inf, 0.5), ValueError,
     r"y holds a non-finite value \(inf\) at row 0"),
    ("length", np.zeros(11), ValueError, "X has 10 rows but y has 11"),
    ("columns", np.zeros((10, 2)), ValueError, "y has 2 columns, the network 1 output$"),
    ("empty", np.zeros(0), ValueError, "y is empty"),
    ("strings", np.array(["1.0"] * 10), TypeError, "y must hold numbers"),
]


@pytest.mark.parametrize("entry", ["evaluate", "loss_and_grad", "fit"])
@pytest.mark.parametrize("case, y, error, match", REGRESSION_Y_CASES,
                         ids=[c[0] for c in REGRESSION_Y_CASES])
def test_bad_regression_targets_are_rejected(entry, case, y, error, match):
    net = regressor()
    with pytest.raises(error, match=match):
        entry_points(net, GOOD_X, y)[entry]()


def test_one_column_is_singular():
    """Issue 17: the message read "y has 1 columns"."""
    net = cdnn.MLP([N_IN, 8, 3], loss="mean_squared_error", seed=0)
    with pytest.raises(ValueError, match="^y has 1 column, the network 3 outputs$"):
        net.evaluate(GOOD_X, np.zeros(10))


def test_sigmoid_targets_must_lie_in_0_1():
    net = cdnn.MLP([N_IN, 8, 2], loss="sigmoid_cross_entropy", seed=0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        net.evaluate(GOOD_X, np.full((10, 2), 2.0))


def test_one_hot_rows_must_lie_in_0_1():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        classifier().loss_and_grad(GOOD_X, np.full((10, 3), -1.0))


@pytest.mark.parametrize("weights, error, match", [
    (-np.ones(10), ValueError, "sample_weight must be non-negative"),
    (np.ones(9), ValueError, "X has 10 rows but sample_weight has 9"),
    (np.where(np.arange(10) == 8, np.nan, 1.0), ValueError,
     r"sample_weight holds a non-finite value \(nan\) at row 8"),
    (np.array(["1"] * 10), TypeError, "sample_weight must hold numbers"),
])
@pytest.mark.parametrize("entry", ["evaluate", "loss_and_grad", "fit"])
def test_bad_sample_weights_are_rejected(entry, weights, error, match):
    net = classifier()
    calls = {"evaluate": lambda: net.evaluate(GOOD_X, GOOD_Y, sample_weight=weights),
             "loss_and_grad": lambda: net.loss_and_grad(GOOD_X, GOOD_Y, sample_weight=weights),
             "fit": lambda: cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(
                 GOOD_X, GOOD_Y, verbose=0, sample_weight=weights)}
    with pytest.raises(error, match=match):
        calls[entry]()


# --- fit's own arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"epochs": -1}, ValueError, "epochs must be at least 0"),
    ({"epochs": 2.0}, TypeError, "epochs must be an integer"),
    ({"epochs": None}, TypeError, "epochs must be an integer"),
    ({"verbose": 3}, ValueError, "verbose must be 0"),
    ({"validation_split": 1.0}, ValueError, "validation_split must be <"),
    ({"validation_split": 0.01}, ValueError, "leaves no rows"),
    ({"validation_split": 0.2, "validation_data": (GOOD_X, GOOD_Y)}, ValueError, "not both"),
    ({"validation_data": (GOOD_X,)}, ValueError, r"validation_data must be \(X_val, y_val\)"),
    ({"class_weight": {5: 1.0}}, ValueError, "class_weight has a key 5"),
    ({"class_weight": {0: -1.0}}, ValueError, "class_weight values must be ≥"),
    ({"class_weight": "auto"}, TypeError, "class_weight must be a dict"),
])
def test_fit_rejects(kwargs, error, match):
    net = classifier()
    before = net.params.copy()
    with pytest.raises(error, match=match):
        cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(GOOD_X, GOOD_Y, **{"verbose": 0, **kwargs})
    assert np.array_equal(net.params, before)


def test_zero_epochs_trains_nothing():
    net = classifier()
    before = net.params.copy()
    history = cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(GOOD_X, GOOD_Y, epochs=0, verbose=0)
    assert history.epoch == [] and np.array_equal(net.params, before)


def test_optimizer_state_of_another_network_is_rejected():
    opt = cdnn.SGD(lr=0.1, momentum=0.9)
    cdnn.Trainer(classifier(), opt).fit(GOOD_X, GOOD_Y, verbose=0)
    with pytest.raises(ValueError, match="make a new one for this network"):
        cdnn.Trainer(cdnn.MLP([N_IN, 5, N_CLASSES]), opt).fit(GOOD_X, GOOD_Y, verbose=0)


def test_optimizer_step_checks_the_gradient():
    net = classifier()
    with pytest.raises(ValueError, match="grad must have the shape and dtype of params"):
        cdnn.SGD(lr=0.1).step(net.params, np.zeros(3, dtype=net.dtype))


# --- load ---------------------------------------------------------------------------------------

def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        cdnn.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("content", [b"", b"not a model", b"\xff" * 64])
def test_load_rejects_files_that_are_not_models(tmp_path, content):
    pytest.importorskip("safetensors")
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        cdnn.load(path)


# --- accepted and converted ---------------------------------------------------------------------

class ArrayLike:
    """What a pandas DataFrame offers numpy: __array__."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("convert", [
    lambda X: np.asfortranarray(X),
    lambda X: np.repeat(X, 2, axis=1)[:, ::2],           # non-contiguous columns
    lambda X: np.repeat(X, 2, axis=0)[::2],              # non-contiguous rows
    lambda X: X.tolist(),
    lambda X: ArrayLike(X),
], ids=["fortran", "strided columns", "strided rows", "list", "__array__"])
def test_unusual_layouts_give_the_same_results(dtype, convert, data):
    X, y = data
    net = cdnn.MLP([N_IN, 8, N_CLASSES], dtype=dtype, seed=0)
    assert np.array_equal(net.predict_proba(convert(X)), net.predict_proba(X))
    loss, grad = net.loss_and_grad(convert(X), y)
    expected_loss, expected_grad = net.loss_and_grad(X, y)
    assert loss == expected_loss and np.array_equal(grad, expected_grad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_dtype", [np.int8, np.int64, np.uint8, np.float16, np.bool_])
def test_integer_boolean_and_float16_inputs_are_converted(dtype, x_dtype, data):
    X, y = data
    X = (X * 3).astype(x_dtype)
    net = cdnn.MLP([N_IN, 8, N_CLASSES], dtype=dtype, seed=0)
    assert np.array_equal(net.forward(X), net.forward(X.astype(dtype)))
    assert net.forward(X).dtype == np.dtype(dtype)


@pytest.mark.parametrize("y_form", [
    lambda y: y.reshape(-1, 1), lambda y: y.astype(np.float32), lambda y: y.astype(np.uint8),
    lambda y: y.tolist(), lambda y: np.eye(N_CLASSES)[y],
], ids=["(n, 1)", "integral floats", "uint8", "list", "one-hot"])
def test_label_forms_are_accepted(y_form, data):
    X, y = data
    net = classifier()
    metrics, expected = net.evaluate(X, y_form(y)), net.evaluate(X, y)
    # one-hot rows take the dense-target path of the loss kernel: equal up to rounding
    assert metrics == pytest.approx(expected, rel=1e-6)
    history = cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(X, y_form(y), epochs=1, verbose=0)
    assert len(history.epoch) == 1


def test_regression_targets_of_shape_n_1_are_accepted(data):
    X, _ = data
    t = np.linspace(-1, 1, len(X))
    net = regressor()
    assert net.evaluate(X, t.reshape(-1, 1)) == net.evaluate(X, t)


def test_integer_and_float16_targets_are_converted(data):
    X, _ = data
    t = np.arange(len(X)) % 4
    net = regressor()
    assert net.evaluate(X, t.astype(np.float16)) == net.evaluate(X, t)


# --- issue 13 rows 16 and 18, issue 17's library items ----------------------------------------

@pytest.mark.parametrize("sizes, layer", [
    ([1, 2**30, 1], "hidden layer 1"),       # one sample's workspace: 5·2**30 values
    ([2**29, 2**29, 2], "the input layer"),  # the widths summed in int32 overflowed
    ([3, 2**31, 2], "hidden layer 1"),
    ([3, 8, 2**31], "the output layer"),
])
def test_widths_beyond_c_ints_are_refused_naming_the_layer(sizes, layer):
    with pytest.raises(ValueError, match=layer):
        cdnn.MLP(sizes)


def test_a_byte_swapped_dtype_becomes_the_native_one():
    """MLP(dtype=">f4") was accepted, then every call failed ("Big-endian buffer")."""
    net = cdnn.MLP([N_IN, 8, 3], dtype=">f4", seed=0)
    assert net.dtype == np.dtype("float32") and net.dtype.isnative
    assert net.predict(GOOD_X).shape == (10,)


@pytest.mark.parametrize("dtype, message", [
    ("float16", "unknown dtype float16; choose float32 or float64"),
    (np.int32, "unknown dtype int32;"), ("no such type", "unknown dtype 'no such type'")])
def test_unknown_dtypes_are_named_plainly(dtype, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cdnn.MLP([N_IN, 3], dtype=dtype)


def test_numpy_scalars_are_numbers():
    net = cdnn.MLP([N_IN, 8, 8, 3], dropout=np.float32(0.25), l2=np.float64(1e-4))
    assert net.dropout == (0.25, 0.25)


def test_sequential_takes_plain_dicts_and_names_a_bad_layer():
    net = cdnn.Sequential([{"units": 8, "activation": "tanh"}, {"units": 3}], N_IN)
    assert net.layer_sizes == (N_IN, 8, 3) and net.activations == ("tanh",)
    with pytest.raises(TypeError, match=r"layers\[1\] must be a cdnn.Dense"):
        cdnn.Sequential([cdnn.Dense(8, "relu"), {"width": 3}], N_IN)
    with pytest.raises(ValueError, match=r"layers\[0\] has unknown keys \['rate'\]"):
        cdnn.Sequential([{"units": 3, "rate": 0.5}], N_IN)
    with pytest.raises(TypeError, match="non-empty list"):
        cdnn.Sequential(cdnn.Dense(3), N_IN)


@pytest.mark.parametrize("entry", ["evaluate", "loss_and_grad", "fit"])
def test_all_zero_sample_weights_are_refused(entry):
    """They were accepted: a division warning, then accuracy NaN in the History."""
    net = cdnn.MLP([N_IN, 8, 3], seed=0)
    y = np.arange(10) % 3
    calls = {"evaluate": lambda w: net.evaluate(GOOD_X, y, sample_weight=w),
             "loss_and_grad": lambda w: net.loss_and_grad(GOOD_X, y, sample_weight=w),
             "fit": lambda w: cdnn.Trainer(net, cdnn.SGD(lr=0.1)).fit(
                 GOOD_X, y, sample_weight=w, verbose=0)}
    with pytest.raises(ValueError, match="is all zero"):
        calls[entry](np.zeros(10))
