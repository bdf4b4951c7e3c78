"""The CPU stand-in for CuPy refuses what a GPU refuses, so that the CUDA engine's code path,
tested on it in CI, does not lean on numpy's leniency: host arrays mixed with device arrays,
host pointers passed to kernels, and, inside a captured CUDA graph, allocations, host copies
from pageable memory and waits. A graph replays what was recorded, with its arguments baked
in. And the engine's paths keep to those rules: a fit's runs and a one-row prediction are
recorded once and replayed."""
import shutil
import threading

import numpy as np
import pytest

import cdnn
from cdnn.cuda import StandinBackend, use_backend
from cdnn.cuda import kernels as K
from cdnn.cuda.standin import CaptureError, DeviceArray

if shutil.which("g++") is None:
    pytest.skip("no C++ compiler to build the CUDA kernels for the CPU", allow_module_level=True)


@pytest.fixture
def be():
    with use_backend(StandinBackend()) as b:
        yield b


def test_host_and_device_arrays_do_not_mix(be):
    d, h = be.xp.zeros(4), np.ones(4)
    assert isinstance(d, DeviceArray) and isinstance(d[1:], DeviceArray)
    with pytest.raises(TypeError, match="cannot be assigned into a device array"):
        d[...] = h
    with pytest.raises(TypeError, match="mixes a device array"):
        d + h
    with pytest.raises(TypeError, match="mixes a device array"):
        np.copyto(d, h)
    d[...] = be.to_device(h)            # what the engine does instead
    d[1] = 5.0                          # scalars are fine, as in CuPy
    assert type(d.get()) is np.ndarray and d.get().tolist() == [1, 5, 1, 1]
    assert isinstance(d * 2 + d, DeviceArray) and float(d.sum()) == 8


def test_kernels_take_device_pointers_and_the_signature_s_scalars(be):
    f = be.module.get_function(K.kernel_name("activation_inplace", np.float32))
    x = be.xp.asarray(np.array([-1.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="numpy array where the kernel takes a device pointer"):
        f((1,), (1,), (x.get(), np.int64(2), np.int32(1), np.float32(0)))
    with pytest.raises(TypeError, match="must be a numpy float32 scalar"):
        f((1,), (1,), (x, np.int64(2), np.int32(1), 0.0))     # a Python float: 8 bytes
    f((1,), (1,), (x, np.int64(2), np.int32(1), np.float32(0)))
    assert x.get().tolist() == [0, 2]


def test_gemm_operands_are_contiguous_device_arrays(be):
    a, b, c = be.xp.ones((3, 4)), be.xp.ones((4, 2)), be.xp.zeros((3, 2))
    with pytest.raises(TypeError, match="C-contiguous 2-D device array"):
        be.gemm(a, be.xp.ones((2, 4)).T, c)
    with pytest.raises(TypeError, match="C-contiguous 2-D device array"):
        be.gemm(a.get(), b, c)
    with pytest.raises(ValueError, match="do not agree"):
        be.gemm(a, b, be.xp.zeros((3, 3)))
    be.gemm(a, b, c)
    assert (c.get() == 4).all()


@pytest.mark.parametrize("what", ["allocate", "to_host", "get", "synchronize", "pageable",
                                  "to_device", "upload"])
def test_a_captured_region_refuses_what_a_graph_cannot_hold(be, what):
    d, pinned = be.xp.zeros(3), be.pinned_empty((3,), np.float64)
    work = {"allocate": lambda: be.xp.empty(3), "to_host": lambda: be.to_host(d),
            "get": lambda: d.get(), "synchronize": be.synchronize,
            "pageable": lambda: be.copy_to_device(d, np.ones(3)),
            "to_device": lambda: be.to_device(np.ones(3)),
            "upload": lambda: be.upload(d, np.ones(3))}[what]
    with pytest.raises(CaptureError, match="inside a captured CUDA graph"):
        be.capture(work)
    be.capture(lambda: be.copy_to_device(d, pinned))    # pinned memory may be copied


def test_a_graph_replays_its_record_with_the_arguments_it_was_recorded_with(be):
    f = be.module.get_function(K.kernel_name("activation_inplace", np.float64))
    x = be.xp.asarray(np.array([-2.0, 3.0]))
    kind = {"value": 2}      # leaky ReLU, slope 0.5

    def launch():
        f((1,), (2,), (x, np.int64(2), np.int32(kind["value"]), np.float64(0.5)))
    replay = be.capture(launch)
    assert x.get().tolist() == [-2, 3]        # recording runs nothing
    kind["value"] = 0       # a later change of the Python value does not reach the graph
    replay()
    replay()
    assert x.get().tolist() == [-0.5, 3] and be.replays == 2


def test_a_fit_records_each_run_shape_once_and_replays_it(be, monkeypatch):
    captures = []
    real = be.capture
    monkeypatch.setattr(be, "capture", lambda launch: captures.append(1) or real(launch))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(100, 5)), rng.integers(0, 2, 100)
    net = cdnn.MLP([5, 6, 2], device="cuda", seed=0)
    cdnn.Trainer(net, cdnn.Adam(0.01), batch_size=8, seed=0).fit(X, y, epochs=3, verbose=0)
    assert 1 <= len(captures) <= 3 < be.replays      # runs of the same shape are replayed


def test_one_row_is_one_replay_of_a_recorded_plan(be, monkeypatch):
    rng = np.random.default_rng(1)
    net = cdnn.MLP([6, 9, 4], device="cuda", seed=0, dtype="float64")
    cpu = cdnn.MLP([6, 9, 4], seed=0, dtype="float64")
    x = rng.normal(size=(1, 6))
    first = net.predict_proba(x)
    monkeypatch.setattr(net.engine, "_forward_rows", None)    # the general path is not taken
    replays = be.replays
    second = net.predict_proba(x)
    assert be.replays == replays + 1 and len(net.engine.plans.plans) == 1
    np.testing.assert_allclose(second, cpu.predict_proba(x), rtol=1e-13)
    assert second is not first and not np.shares_memory(second, first)
    # the graph reads the parameters when it is replayed: a change is seen
    cpu.params[...] = rng.normal(size=cpu.params.size)
    net.params[...] = be.to_device(cpu.params)
    np.testing.assert_allclose(net.predict_proba(x), cpu.predict_proba(x), rtol=1e-13)
    assert len(net.engine.plans.plans) == 1


def test_rows_that_are_not_ready_take_the_general_path(be):
    net = cdnn.MLP([3, 4, 2], device="cuda", seed=0)
    cpu = cdnn.MLP([3, 4, 2], seed=0)
    for X in ([[1, 2, 3]], np.ones((2, 3)), np.ones((100, 3), np.float32)):
        np.testing.assert_allclose(net.forward(X), cpu.forward(X), rtol=1e-6)
    assert len(net.engine.plans.plans) == 0        # float64, lists and 100 rows: converted
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at row 0, column 0"):
        net.forward(np.array([[np.nan, 0, 0]], np.float32))     # ready but not finite


def test_predictions_from_several_threads_take_turns(be):
    net = cdnn.MLP([8, 16, 3], device="cuda", seed=0)
    cpu = cdnn.MLP([8, 16, 3], seed=0)
    rows = np.random.default_rng(2).normal(size=(40, 1, 8)).astype(np.float32)
    wrong = []

    def predict(start):
        for x in rows[start::4]:
            if not np.allclose(net.forward(x), cpu.forward(x), rtol=1e-5, atol=1e-6):
                wrong.append(x)
    threads = [threading.Thread(target=predict, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_the_cli_and_onnx_export_on_the_device(be, tmp_path, capsys):
    from cdnn import cli
    path = str(tmp_path / "m.safetensors")
    assert cli.main(["train", "--device", "cuda", "--epochs", "1", "--verbose", "0",
                     "--save", path]) == 0
    assert cli.main(["evaluate", path, "--device", "cuda"]) == 0
    assert "accuracy" in capsys.readouterr().out
    pytest.importorskip("onnx")
    net = cdnn.load(path, device="cuda")
    model = net.to_onnx()
    weights = {t.name: t for t in model.graph.initializer}
    assert "layers.0.weight" in weights
