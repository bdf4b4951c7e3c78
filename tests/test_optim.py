"""Optimizers: cdnn's fused update kernels against a plain numpy reference of each update rule
and against torch.optim, training the same network full batch without shuffling."""
import numpy as np
import pytest

import cdnn

STEPS = 6
SIZES = [5, 7, 3]

# (cdnn class, hyper-parameters) — the same names and meanings as torch.optim's; every
# optimizer of cdnn/kinds.py appears (test_every_optimizer_is_tested)
CASES = {
    "sgd": (cdnn.SGD, dict(lr=0.1)),
    "sgd_momentum": (cdnn.SGD, dict(lr=0.1, momentum=0.9)),
    "sgd_nesterov": (cdnn.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd_weight_decay": (cdnn.SGD, dict(lr=0.1, momentum=0.5, weight_decay=0.1)),
    "adam": (cdnn.Adam, dict(lr=0.01)),
    "adam_weight_decay": (cdnn.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    "adamw": (cdnn.AdamW, dict(lr=0.01, weight_decay=0.1)),
    "rmsprop": (cdnn.RMSprop, dict(lr=0.01)),
    "rmsprop_momentum": (cdnn.RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.8)),
    "rmsprop_weight_decay": (cdnn.RMSprop, dict(lr=0.01, weight_decay=0.1)),
}


def reference_update(name: str):
    """The optimizer's numpy reference (cdnn/kinds.py), as update(p, g, t) from zero state."""
    cls, hp = CASES[name]
    kind, state = cls.spec(), {}
    hyper = {k: v for k, v in hp.items() if k != "lr"}

    def update(p, g, t):
        if not state:
            state.update({buffer: np.zeros_like(p) for buffer in kind.state})
        return kind.reference(p, g, state, hp["lr"], t, **hyper)
    return update


@pytest.fixture
def problem(rng):
    X = rng.normal(size=(24, SIZES[0]))
    y = rng.integers(0, SIZES[-1], size=24)
    return X, y


def make_net(dtype="float64"):
    return cdnn.MLP(SIZES, activation="tanh", dtype=dtype, seed=3)


def train_cdnn(name, X, y, dtype="float64", clip_norm=None):
    cls, hp = CASES[name]
    net, opt = make_net(dtype), cls(**hp)
    trainer = cdnn.Trainer(net, opt, batch_size=len(X), clip_norm=clip_norm)
    trainer.fit(X, y, epochs=STEPS, shuffle=False, verbose=0)
    assert opt.steps == STEPS
    return net


def test_every_optimizer_is_tested():
    assert {cls.kind for cls, _ in CASES.values()} == set(cdnn.kinds.OPTIMIZERS)


@pytest.mark.parametrize("name", CASES)
def test_matches_numpy_reference(name, problem):
    X, y = problem
    net = train_cdnn(name, X, y)
    ref = make_net()
    update = reference_update(name)
    for t in range(1, STEPS + 1):
        _, grad = ref.loss_and_grad(X, y)
        ref.params[...] = update(ref.params, grad, t)
    assert not np.allclose(ref.params, make_net().params, atol=1e-3)   # training moved them
    np.testing.assert_allclose(net.params, ref.params, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["sgd_nesterov", "adamw", "rmsprop_momentum"])
def test_float32_follows_the_float64_reference(name, problem):
    X, y = problem
    net32 = train_cdnn(name, X, y, dtype="float32")
    net64 = train_cdnn(name, X, y)
    assert net32.params.dtype == np.float32
    np.testing.assert_allclose(net32.params, net64.params, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "rmsprop"])
def test_step_method_matches_trainer(name, problem):
    """Optimizer.step (for hand-written loops over loss_and_grad) runs the same kernel."""
    X, y = problem
    net = train_cdnn(name, X, y)
    cls, hp = CASES[name]
    manual, opt = make_net(), cls(**hp)
    for _ in range(STEPS):
        _, grad = manual.loss_and_grad(X, y)
        opt.step(manual.params, grad)
    np.testing.assert_allclose(manual.params, net.params, rtol=0, atol=1e-12)


def test_clip_norm_scales_the_global_gradient_norm(problem):
    X, y = problem
    clip = 0.05
    net = train_cdnn("sgd_momentum", X, y, clip_norm=clip)
    ref = make_net()
    update = reference_update("sgd_momentum")
    for t in range(1, STEPS + 1):
        _, grad = ref.loss_and_grad(X, y)
        norm = np.linalg.norm(grad)
        assert norm > clip   # so clipping is active at every step
        ref.params[...] = update(ref.params, grad * clip / (norm + 1e-6), t)
    np.testing.assert_allclose(net.params, ref.params, rtol=0, atol=1e-9)


# --- against torch.optim ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny tensors: a thread pool only contends for the cores
    yield torch
    torch.set_num_threads(threads)


def torch_model(torch, net):
    """A torch copy of net: Linear layers (weight is (out, in), cdnn's W transposed) + tanh."""
    layers = []
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        linear = torch.nn.Linear(*W.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(linear)
        if i < len(net.weights) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("name", CASES)
def test_matches_torch_optim(name, problem, torch):
    X, y = problem
    net = train_cdnn(name, X, y)
    model = torch_model(torch, make_net())
    cls, hp = CASES[name]
    opt = getattr(torch.optim, cls.__name__)(model.parameters(), **hp)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        opt.step()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for W, b, linear in zip(net.weights, net.biases, linears):
        np.testing.assert_allclose(W, linear.weight.detach().numpy().T, rtol=0, atol=1e-9)
        np.testing.assert_allclose(b, linear.bias.detach().numpy(), rtol=0, atol=1e-9)


def test_clip_norm_matches_torch(problem, torch):
    X, y = problem
    net = train_cdnn("adam", X, y, clip_norm=0.05)
    model = torch_model(torch, make_net())
    opt = torch.optim.Adam(model.parameters(), **CASES["adam"][1])
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
        opt.step()
    first = next(m for m in model if isinstance(m, torch.nn.Linear))
    np.testing.assert_allclose(net.weights[0], first.weight.detach().numpy().T, rtol=0, atol=1e-9)


# --- arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: cdnn.SGD(lr=0), lambda: cdnn.SGD(lr=-1), lambda: cdnn.SGD(lr=float("nan")),
    lambda: cdnn.SGD(momentum=-0.1), lambda: cdnn.SGD(nesterov=True),
    lambda: cdnn.Adam(betas=(0.9, 1.0)), lambda: cdnn.Adam(betas=(0.9,)),
    lambda: cdnn.AdamW(weight_decay=-1), lambda: cdnn.RMSprop(alpha=1.5),
    lambda: cdnn.RMSprop(eps=-1e-8),
])
def test_bad_hyperparameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_defaults_are_pytorchs(torch):
    param = [torch.nn.Parameter(torch.zeros(1))]
    for cls in (cdnn.SGD, cdnn.Adam, cdnn.AdamW, cdnn.RMSprop):
        ours, theirs = cls(), getattr(torch.optim, cls.__name__)(param).defaults
        for key, value in vars(ours).items():
            if key not in ("state", "steps"):
                assert value == pytest.approx(theirs[key]), (cls.__name__, key)


def test_optimizer_refuses_state_of_another_network(problem):
    X, y = problem
    opt = cdnn.SGD(lr=0.1)
    cdnn.Trainer(make_net(), opt, batch_size=8).fit(X, y, verbose=0)
    other = cdnn.MLP([5, 3], dtype="float64")
    with pytest.raises(ValueError, match="make a new one"):
        cdnn.Trainer(other, opt).fit(X, y, verbose=0)


# --- step() and later changes are checked as the constructor checks (issue 13, rows 11, 18) ---

@pytest.mark.parametrize("cls", [cdnn.SGD, cdnn.Adam, cdnn.AdamW, cdnn.RMSprop])
@pytest.mark.parametrize("attribute, value", [("lr", -1), ("lr", 0), ("lr", float("nan")),
                                              ("lr", "0.1"), ("weight_decay", -1e-4)])
def test_changing_a_hyperparameter_is_checked(cls, attribute, value):
    opt = cls(lr=0.01)
    with pytest.raises((ValueError, TypeError), match=attribute):
        setattr(opt, attribute, value)
    assert getattr(opt, attribute) == cls(lr=0.01).__dict__[attribute]   # unchanged


@pytest.mark.parametrize("change", [
    lambda o: setattr(o, "momentum", -0.5), lambda o: setattr(o, "nesterov", "false"),
    lambda o: setattr(o, "momentum", float("inf")),
])
def test_changing_sgd_is_checked(change):
    with pytest.raises((ValueError, TypeError)):
        change(cdnn.SGD(lr=0.1, momentum=0.9))


@pytest.mark.parametrize("make", [lambda: cdnn.Adam(eps=0), lambda: cdnn.RMSprop(eps=0),
                                  lambda: cdnn.SGD(momentum=0.9, nesterov="false"),
                                  lambda: cdnn.Adam(betas=0.9)])
def test_more_bad_hyperparameters_are_refused(make):
    """Adam(eps=0) with zero initial state divided 0 by 0 at the first zero gradient."""
    with pytest.raises((ValueError, TypeError)):
        make()


def test_nesterov_without_momentum_is_refused_when_momentum_drops():
    opt = cdnn.SGD(lr=0.1, momentum=0.9, nesterov=True)
    opt.momentum = 0.0
    net = cdnn.MLP([2, 2], dtype="float64")
    with pytest.raises(ValueError, match="Nesterov"):
        opt.step(net.params, np.zeros_like(net.params))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"lr": -1.0}, ValueError, "lr must be >"),
    ({"grad": "nan"}, ValueError, "non-finite"),
    ({"grad": "list"}, TypeError, "grad must be a numpy array"),
    ({"grad": "float32"}, ValueError, "shape and dtype of params"),
    ({"params": "2-D"}, ValueError, "1-D float32 or float64"),
])
def test_step_arguments_are_checked(kwargs, error, match):
    net = cdnn.MLP([3, 4, 2], dtype="float64", seed=0)
    params, grad = net.params, np.full_like(net.params, 0.1)
    grad = {"nan": np.where(np.arange(grad.size) == 3, np.nan, grad), "list": list(grad),
            "float32": grad.astype(np.float32)}.get(kwargs.pop("grad", None), grad)
    if kwargs.pop("params", None):
        params = params.reshape(2, -1)
    before = net.params.copy()
    opt = cdnn.Adam()
    with pytest.raises(error, match=match):
        opt.step(params, grad, **kwargs)
    np.testing.assert_array_equal(net.params, before)
    assert opt.steps == 0 and opt.state is None


def test_reset_in_a_callback_zeroes_the_state_and_training_goes_on():
    """opt.reset() in a callback dropped the state the fit's steps hold ("Value after * must
    be an iterable", issue 23 #12): now the fit goes on as with a new optimizer from there."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 3)), rng.integers(0, 2, size=64)

    class ResetAfterFirstEpoch(cdnn.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 0:
                self.trainer.optimizer.reset()
                assert self.trainer.optimizer.steps == 0
                assert not any(a.any() for a in self.trainer.optimizer.state.values())

    def fit(net, opt, epochs, callbacks=()):
        cdnn.Trainer(net, opt, batch_size=16).fit(X, y, epochs=epochs, shuffle=False,
                                                 callbacks=list(callbacks), verbose=0)

    reset = cdnn.MLP([3, 8, 2], dtype="float64", seed=0)
    opt = cdnn.Adam(lr=0.01)
    fit(reset, opt, 2, [ResetAfterFirstEpoch()])
    assert opt.steps == 4
    fresh = cdnn.MLP([3, 8, 2], dtype="float64", seed=0)
    fit(fresh, cdnn.Adam(lr=0.01), 1)
    fit(fresh, cdnn.Adam(lr=0.01), 1)
    np.testing.assert_array_equal(reset.params, fresh.params)

    opt.reset()     # a reset optimizer is as a new one: it may train another network
    other = cdnn.MLP([5, 4, 2], dtype="float32", seed=0)
    cdnn.Trainer(other, opt, batch_size=16).fit(rng.normal(size=(32, 5)), y[:32], epochs=1,
                                                verbose=0)
    assert opt.state["m"].shape == opt.state["v"].shape == other.params.shape
    with pytest.raises(ValueError, match="already holds state"):
        fit(cdnn.MLP([3, 8, 2], dtype="float64", seed=0), opt, 1)


def test_an_optimizer_pickled_with_positional_state_unpickles_with_named_state():
    """cdnn up to 3f99230 pickled (state1, state2); a fitted estimator carries its optimizer"""
    import pickle
    m, v = np.arange(3.0), np.ones(3)
    opt = cdnn.Adam(lr=0.01)
    opt.__dict__["state"] = (m, v)     # as the old class's __dict__ held it
    back = pickle.loads(pickle.dumps(opt))
    assert list(back.state) == ["m", "v"] and back.lr == 0.01
    np.testing.assert_array_equal(back.state["m"], m)
    np.testing.assert_array_equal(back.state["v"], v)
