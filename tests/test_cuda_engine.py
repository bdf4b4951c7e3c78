"""The CUDA engine's code path (cdnn/cuda) on the CPU stand-in for CuPy: numpy arrays for device
arrays, kernels.cu compiled by g++, launches run eagerly where a GPU replays a graph. The
criterion of issue 26, here on the stand-in: one epoch with the same seed and batches on "cuda"
and on "cpu" gives parameters within 1e-10 in float64. On a GPU, bench/gpu_check.py runs this
file with CDNN_TEST_CUDA_DEVICE=1, on CuPy."""

import numpy as np
import pytest

import cdnn
from cuda_setup import skip_without_a_compiler, standin  # noqa: F401 (a fixture)
from cdnn.cuda import CudaUnavailable, backend, use_backend

skip_without_a_compiler()

OPTIMIZERS = {
    "sgd": lambda: cdnn.SGD(0.05),
    "momentum": lambda: cdnn.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: cdnn.Adam(0.01, weight_decay=1e-3),
    "adamw": lambda: cdnn.AdamW(0.01),
    "rmsprop": lambda: cdnn.RMSprop(0.005, momentum=0.5),
}


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def problem(loss, n=200, d=12, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, k, n)
    elif loss == "sigmoid_cross_entropy":
        y = rng.integers(0, 2, (n, k)).astype(float)
    elif loss == "poisson":
        y = rng.poisson(1.5, (n, k)).astype(float)
    else:
        y = rng.normal(size=(n, k))
    return X, y


def fit_both(loss="softmax_cross_entropy", optimizer="adam", dtype="float64", epochs=1,
             sample_weight=None, validation=False, fit_kw=None, **net_kw):
    X, y = problem(loss)
    nets, histories = [], []
    for device in ("cpu", "cuda"):
        net = cdnn.MLP([12, 16, 8, 3], loss=loss, dtype=dtype, seed=3, device=device, **net_kw)
        trainer = cdnn.Trainer(net, OPTIMIZERS[optimizer](), batch_size=24, seed=7,
                               **(fit_kw or {}))
        histories.append(trainer.fit(X, y, epochs=epochs, sample_weight=sample_weight,
                                     validation_data=(X[:50], y[:50]) if validation else None,
                                     verbose=0).history)
        nets.append(net)
    return nets, histories


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_one_epoch_matches_the_cpu_engine(optimizer):
    (cpu, cuda), (h_cpu, h_cuda) = fit_both(optimizer=optimizer)
    assert type(cuda.engine).__name__ == "CudaEngine"
    assert np.abs(host(cuda.params) - cpu.params).max() < 1e-10
    np.testing.assert_allclose(h_cuda["loss"], h_cpu["loss"], rtol=1e-12)
    np.testing.assert_allclose(h_cuda["accuracy"], h_cpu["accuracy"], rtol=1e-12)


@pytest.mark.parametrize("loss", ["sigmoid_cross_entropy", "mean_squared_error", "poisson"])
def test_every_loss_trains_as_on_the_cpu(loss):
    (cpu, cuda), (h_cpu, h_cuda) = fit_both(loss=loss, optimizer="momentum", epochs=2,
                                            activation="tanh")
    assert np.abs(host(cuda.params) - cpu.params).max() < 1e-10
    np.testing.assert_allclose(h_cuda["loss"], h_cpu["loss"], rtol=1e-12)


@pytest.mark.parametrize("activation", ["gelu", "sigmoid", "leaky_relu", "identity"])
def test_dropout_l2_clipping_weights_and_validation_as_on_the_cpu(activation):
    weights = np.random.default_rng(2).uniform(0.2, 3, 200)
    (cpu, cuda), (h_cpu, h_cuda) = fit_both(
        optimizer="sgd", epochs=2, sample_weight=weights, validation=True,
        activation=activation, dropout=0.3, l2=1e-2, fit_kw={"clip_norm": 0.5})
    assert np.abs(host(cuda.params) - cpu.params).max() < 1e-10
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h_cuda[key], h_cpu[key], rtol=1e-10)


def test_float32_follows_the_cpu_within_1e4():
    (cpu, cuda), _ = fit_both(dtype="float32", optimizer="adam", epochs=2)
    scale = np.abs(cpu.params).max()
    assert np.abs(host(cuda.params) - cpu.params).max() / scale < 1e-4


def test_predict_evaluate_and_gradients_as_on_the_cpu():
    X, y = problem("softmax_cross_entropy")
    cpu = cdnn.MLP([12, 16, 8, 3], activation="gelu", dtype="float64", seed=3, l2=0.1)
    cuda = cdnn.MLP([12, 16, 8, 3], activation="gelu", dtype="float64", seed=3, l2=0.1,
                    device="cuda")
    np.testing.assert_allclose(host(cuda.params), cpu.params, rtol=0, atol=0)
    np.testing.assert_allclose(cuda.predict_proba(X), cpu.predict_proba(X), rtol=1e-12)
    np.testing.assert_array_equal(cuda.predict(X), cpu.predict(X))
    assert cuda.evaluate(X, y) == pytest.approx(cpu.evaluate(X, y), rel=1e-12)
    (l_cpu, g_cpu), (l_cuda, g_cuda) = cpu.loss_and_grad(X, y), cuda.loss_and_grad(X, y)
    assert l_cuda == pytest.approx(l_cpu, rel=1e-12)
    np.testing.assert_allclose(host(g_cuda), g_cpu, rtol=1e-10, atol=1e-12)
    one = cuda.predict_proba(X[:1])
    assert isinstance(one, np.ndarray) and one.shape == (1, 3)


def test_gradients_in_chunks_sum_to_the_whole(monkeypatch):
    from cdnn.cuda import engine
    X, y = problem("mean_squared_error")
    net = cdnn.MLP([12, 16, 8, 3], loss="mse", dtype="float64", seed=3, device="cuda",
                   dropout=0.2)
    whole = net.loss_and_grad(X, y)
    monkeypatch.setattr(engine, "CHUNK_ROWS", 37)
    net = cdnn.MLP([12, 16, 8, 3], loss="mse", dtype="float64", seed=3, device="cuda",
                   dropout=0.2)
    chunked = net.loss_and_grad(X, y)
    assert chunked[0] == pytest.approx(whole[0], rel=1e-12)
    np.testing.assert_allclose(host(chunked[1]), host(whole[1]), rtol=1e-10, atol=1e-14)


def test_a_diverging_fit_keeps_the_last_good_parameters_as_on_the_cpu():
    X, y = problem("mean_squared_error")
    X[150:] *= 1e150        # the second run of steps overflows
    nets, errors = [], []
    for device in ("cpu", "cuda"):
        net = cdnn.MLP([12, 16, 8, 3], loss="mse", dtype="float64", seed=3, device=device)
        with pytest.raises(FloatingPointError) as e:
            cdnn.Trainer(net, cdnn.SGD(0.01), batch_size=10, seed=1).fit(X, y, epochs=2,
                                                                         verbose=0)
        nets.append(host(net.params))
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    np.testing.assert_allclose(nets[1], nets[0], rtol=0, atol=1e-10)
    assert np.isfinite(nets[1]).all()


def test_to_moves_a_network_and_training_goes_on_on_the_device(tmp_path):
    X, y = problem("softmax_cross_entropy")
    net = cdnn.MLP([12, 16, 3], dtype="float64", seed=0)
    opt = cdnn.Adam(0.01)
    cdnn.Trainer(net, opt, batch_size=32, seed=0).fit(X, y, epochs=1, verbose=0)
    twin = cdnn.MLP([12, 16, 3], dtype="float64", seed=0)
    twin_opt = cdnn.Adam(0.01)
    cdnn.Trainer(twin, twin_opt, batch_size=32, seed=0).fit(X, y, epochs=1, verbose=0)
    assert net.to("cuda") is net and net.device == "cuda"
    for n, o in ((net, opt), (twin, twin_opt)):     # the optimizer's state follows the net
        cdnn.Trainer(n, o, batch_size=32, seed=1).fit(X, y, epochs=1, verbose=0)
    np.testing.assert_allclose(host(net.params), twin.params, rtol=0, atol=1e-10)
    net.save(tmp_path / "m.safetensors", opt)
    back = cdnn.load(tmp_path / "m.safetensors", device="cuda")
    assert back.device == "cuda"
    np.testing.assert_array_equal(host(back.params), host(net.params))
    assert isinstance(net.to("cpu").params, np.ndarray)
    np.testing.assert_array_equal(net.params, host(back.params))


def test_a_recorded_run_is_replayed_and_hyperparameters_set_between_runs_are_read():
    X, y = problem("softmax_cross_entropy")
    nets = []
    for device in ("cpu", "cuda"):
        net = cdnn.MLP([12, 16, 3], dtype="float64", seed=0, device=device)
        opt = cdnn.SGD(0.1, momentum=0.5)
        lowers = cdnn.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
        cdnn.Trainer(net, opt, batch_size=16, seed=0).fit(X, y, epochs=3, verbose=0,
                                                         callbacks=[lowers])
        opt.momentum = 0.9
        cdnn.Trainer(net, opt, batch_size=16, seed=0).fit(X, y, epochs=1, verbose=0)
        nets.append(host(net.params))
    np.testing.assert_allclose(nets[1], nets[0], rtol=0, atol=1e-10)


@pytest.fixture
def no_cupy(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    monkeypatch.setattr(backend, "_backends", {})
    with use_backend(None):
        yield


def test_cuda_without_cupy_is_one_clear_error(no_cupy):
    with pytest.raises(CudaUnavailable, match=r"pip install 'cdnn\[cuda12\]'"):
        cdnn.MLP([4, 2], device="cuda")


def test_the_cli_says_what_to_install_for_device_cuda(no_cupy, capsys):
    from cdnn import cli
    assert cli.main(["train", "--device", "cuda", "--epochs", "1", "--verbose", "0"]) != 0
    err = capsys.readouterr().err
    assert "needs CuPy: pip install 'cdnn[cuda12]'" in err and "None" not in err


def test_bad_devices_and_precisions_are_refused():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        cdnn.MLP([4, 2], device="gpu")
    with pytest.raises(ValueError, match="runs on device='cuda'"):
        cdnn.MLP([4, 2], matmul_precision="tensorfloat32")
    with pytest.raises(ValueError, match="matmul_precision"):
        cdnn.MLP([4, 2], device="cuda", matmul_precision="float16")
    with pytest.raises(ValueError, match="3 features per row, the network expects 4"):
        cdnn.MLP([4, 2], device="cuda").predict(np.ones((2, 3)))


def test_the_cuda_engine_implements_the_engine_interface():
    """Issue 24's interface, which a second engine implements: every name it lists."""
    from cdnn._engine import EngineInterface
    engine = cdnn.MLP([4, 3, 2], device="cuda").engine
    missing = {name for name in set(vars(EngineInterface)) | set(EngineInterface.__annotations__)
               if not name.startswith("_") and not hasattr(engine, name)}
    assert isinstance(engine, EngineInterface) and not missing, missing
    assert engine.device == "cuda"
