"""Model files: safetensors round trips, refusal of every malformed file, and resuming training
from a checkpoint that holds the optimizer's state."""
import json
import os

import numpy as np
import pytest

import cdnn
from cdnn import io
from cdnn.schedules import CosineWithWarmup

DATA = os.path.join(os.path.dirname(__file__), "data")

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open                       # noqa: E402
from safetensors.numpy import load_file, save_file      # noqa: E402


def trained_net(dtype, rng, **kwargs):
    net = cdnn.MLP([4, 6, 5, 3], activation=["relu", "tanh"], dtype=dtype, seed=7, **kwargs)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, size=32)
    cdnn.Trainer(net, cdnn.Adam(lr=0.01), batch_size=8).fit(X, y, epochs=2, verbose=0)
    return net, X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_identical(dtype, rng, tmp_path):
    net, X, _ = trained_net(dtype, rng, dropout=[0.1, 0.2], l2=1e-3)
    path = tmp_path / "net.safetensors"
    net.save(path)
    back = cdnn.load(path)
    assert back.get_config() == net.get_config()
    assert back.params.dtype == net.params.dtype
    assert back.params.tobytes() == net.params.tobytes()
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))


def test_the_file_is_plain_safetensors(rng, tmp_path):
    net, _, _ = trained_net("float32", rng)
    path = tmp_path / "net.safetensors"
    net.save(path)
    tensors = load_file(path)
    assert sorted(tensors) == sorted(f"layers.{i}.{kind}" for i in range(3)
                                     for kind in ("weight", "bias"))
    for i, (W, b) in enumerate(zip(net.weights, net.biases)):
        np.testing.assert_array_equal(tensors[f"layers.{i}.weight"], W)   # (fan_in, fan_out)
        np.testing.assert_array_equal(tensors[f"layers.{i}.bias"], b)
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "cdnn" and meta["format_version"] == "2"
    assert json.loads(meta["config"]) == net.get_config()


def test_save_leaves_no_partial_file_and_overwrites(rng, tmp_path):
    net, _, _ = trained_net("float32", rng)
    path = tmp_path / "net.safetensors"
    net.save(path)
    net.params[0] += 1
    net.save(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["net.safetensors"]
    assert cdnn.load(path).params[0] == net.params[0]


# --- malformed files --------------------------------------------------------------------------

def write(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.fixture
def good(rng, tmp_path):
    """(tensors, metadata) of a valid file, to break one piece at a time."""
    net, _, _ = trained_net("float64", rng)
    net.save(tmp_path / "good.safetensors", cdnn.SGD(lr=0.1, momentum=0.9))
    with safe_open(tmp_path / "good.safetensors", framework="numpy") as f:
        meta = f.metadata()
    return load_file(tmp_path / "good.safetensors"), meta


def with_config(meta, **changes):
    config = json.loads(meta["config"]) | changes
    return meta | {"config": json.dumps(config)}


BROKEN = {
    "no metadata": lambda t, m: (t, None),
    "wrong format": lambda t, m: (t, m | {"format": "keras"}),
    "no format": lambda t, m: (t, {k: v for k, v in m.items() if k != "format"}),
    "future version": lambda t, m: (t, m | {"format_version": "3"}),
    "no config": lambda t, m: (t, {k: v for k, v in m.items() if k != "config"}),
    "config not json": lambda t, m: (t, m | {"config": "{layer_sizes: [4"}),
    "config not an object": lambda t, m: (t, m | {"config": "[4, 6, 5, 3]"}),
    "bad layer sizes": lambda t, m: (t, with_config(m, layer_sizes=[4, -6, 5, 3])),
    "unknown activation": lambda t, m: (t, with_config(m, activation=["relu", "swish"])),
    "unknown config key": lambda t, m: (t, with_config(m, momentum=0.9)),
    "dtype mismatch": lambda t, m: (t, with_config(m, dtype="float32")),
    "missing tensor": lambda t, m: ({k: v for k, v in t.items() if k != "layers.1.bias"}, m),
    "extra tensor": lambda t, m: (t | {"layers.3.weight": np.zeros((3, 3))}, m),
    "wrong shape": lambda t, m: (t | {"layers.0.weight": np.zeros((6, 4))}, m),
    "wrong dtype": lambda t, m: (t | {"layers.0.bias": np.zeros(6, np.float32)}, m),
    "integer tensor": lambda t, m: (t | {"layers.0.bias": np.zeros(6, np.int64)}, m),
    "nan weight": lambda t, m: (t | {"layers.2.weight": np.full((5, 3), np.nan)}, m),
    "inf bias": lambda t, m: (t | {"layers.2.bias": np.array([0, np.inf, 0])}, m),
    "state of wrong size": lambda t, m: (t | {"optimizer.momentum": np.zeros(3)}, m),
    "state missing": lambda t, m: ({k: v for k, v in t.items() if k != "optimizer.momentum"}, m),
    "state without metadata": lambda t, m: (t, {k: v for k, v in m.items() if k != "optimizer"}),
    "nan state": lambda t, m: (t | {"optimizer.momentum": np.full_like(t["optimizer.momentum"],
                                                                       np.nan)}, m),
    "another optimizer's state": lambda t, m: ({k: v for k, v in t.items()
                                                if k != "optimizer.momentum"}
                                               | {"optimizer.m": t["optimizer.momentum"]}, m),
    "format 1 names in format 2": lambda t, m: ({k: v for k, v in t.items()
                                                 if k != "optimizer.momentum"}
                                                | {"optimizer.state1": t["optimizer.momentum"],
                                                   "optimizer.state2": t["optimizer.momentum"]},
                                                m),
    "format 2 names in format 1": lambda t, m: (t, m | {"format_version": "1"}),
}


@pytest.mark.parametrize("case", BROKEN)
def test_malformed_files_are_refused(case, good, tmp_path):
    tensors, meta = BROKEN[case](*good)
    path = write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(ValueError):
        cdnn.load(path)


OPTIMIZER_BROKEN = {
    "not json": "{class: SGD",
    "missing steps": json.dumps({"class": "SGD", "hyperparameters": {"lr": 0.1}}),
    "negative steps": json.dumps({"class": "SGD", "hyperparameters": {"lr": 0.1}, "steps": -1}),
    "fractional steps": json.dumps({"class": "SGD", "hyperparameters": {"lr": 0.1},
                                    "steps": 1.5}),
    "unknown class": json.dumps({"class": "Lion", "hyperparameters": {}, "steps": 1}),
    "bad hyper-parameter": json.dumps({"class": "SGD", "hyperparameters": {"lr": -1},
                                       "steps": 1}),
    "unknown hyper-parameter": json.dumps({"class": "SGD", "hyperparameters": {"beta": 1},
                                           "steps": 1}),
    # issue 13 row 17: "false" turned Nesterov on; 2**63 steps loaded, then fit overflowed
    "string flag": json.dumps({"class": "SGD", "hyperparameters": {
        "lr": 0.1, "momentum": 0.9, "nesterov": "false"}, "steps": 1}),
    "number flag": json.dumps({"class": "SGD", "hyperparameters": {
        "lr": 0.1, "momentum": 0.9, "nesterov": 1}, "steps": 1}),
    "string number": json.dumps({"class": "SGD", "hyperparameters": {"lr": "0.1"}, "steps": 1}),
    "huge steps": json.dumps({"class": "SGD", "hyperparameters": {"lr": 0.1}, "steps": 2**63}),
    "boolean steps": json.dumps({"class": "SGD", "hyperparameters": {"lr": 0.1}, "steps": True}),
}


@pytest.mark.parametrize("case", OPTIMIZER_BROKEN)
def test_malformed_optimizer_metadata_is_refused(case, good, tmp_path):
    tensors, meta = good
    path = write(tmp_path / "bad.safetensors", tensors, meta | {"optimizer": OPTIMIZER_BROKEN[case]})
    with pytest.raises(ValueError):
        cdnn.load(path, optimizer=cdnn.SGD())


@pytest.mark.parametrize("content", [b"", b"not a model", b"\xff" * 64,
                                     (1 << 40).to_bytes(8, "little") + b"{}"])
def test_non_safetensors_files_are_refused(content, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        cdnn.load(path)


def test_truncated_file_is_refused(good, tmp_path):
    path = write(tmp_path / "m.safetensors", *good)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError):
        cdnn.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        cdnn.load(tmp_path / "nothing.safetensors")


def test_optimizer_mismatches_are_refused(rng, tmp_path):
    net, _, _ = trained_net("float64", rng)
    net.save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="no optimizer state"):
        cdnn.load(tmp_path / "plain.safetensors", optimizer=cdnn.Adam())
    net.save(tmp_path / "adam.safetensors", cdnn.Adam())
    with pytest.raises(ValueError, match="Adam") as error:
        cdnn.load(tmp_path / "adam.safetensors", optimizer=cdnn.AdamW())
    assert "a Adam" not in str(error.value)   # issue 17: the wording read "a Adam"
    with pytest.raises(TypeError):
        net.save(tmp_path / "x.safetensors", optimizer="adam")
    with pytest.raises(TypeError):
        io.save("not a net", tmp_path / "x.safetensors")


# --- resuming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("make_opt", [lambda: cdnn.Adam(lr=0.01, weight_decay=1e-3),
                                      lambda: cdnn.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                      lambda: cdnn.RMSprop(lr=0.005, momentum=0.5)])
def test_resume_matches_an_uninterrupted_run(make_opt, dtype, rng, tmp_path):
    """4 epochs in one go == 2 epochs, save with the optimizer, load, 2 more epochs — bit for
    bit, with dropout and a per-step schedule (both keyed by the optimizer's step count)."""
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, size=50)
    schedule = CosineWithWarmup(total_steps=28, warmup_steps=5)

    def new_net():
        return cdnn.MLP([4, 16, 3], dtype=dtype, seed=5, dropout=0.3)

    def fit(net, opt, epochs):
        cdnn.Trainer(net, opt, batch_size=8, schedule=schedule).fit(
            X, y, epochs=epochs, shuffle=False, verbose=0)

    straight = new_net()
    fit(straight, make_opt(), 4)

    first, opt = new_net(), make_opt()
    fit(first, opt, 2)
    first.save(tmp_path / "ckpt.safetensors", opt)
    resumed_opt = type(opt)(lr=1.0)              # hyper-parameters come from the file
    resumed = cdnn.load(tmp_path / "ckpt.safetensors", optimizer=resumed_opt)
    assert resumed_opt.steps == 14 and resumed_opt.lr == opt.lr
    fit(resumed, resumed_opt, 2)
    assert resumed.params.tobytes() == straight.params.tobytes()


# --- load checks every tensor before it builds (issue 13, rows 12 and 17) --------------------

def test_tensor_dtypes_are_checked_before_the_network_is_built(good, tmp_path, monkeypatch):
    """Row 12: int8 tensors under a float64 config allocated the float64 network first."""
    tensors, meta = good
    tensors = {k: v.astype(np.int8) for k, v in tensors.items()}
    path = write(tmp_path / "int8.safetensors", tensors, meta)
    monkeypatch.setattr(cdnn.network, "MLP",
                        lambda **config: pytest.fail("built the network first"))
    with pytest.raises(ValueError, match="is int8, the config says float64"):
        cdnn.load(path)


def test_negative_running_squares_are_refused(rng, tmp_path):
    """Row 17: Adam's v < 0 loaded, then gave a spurious divergence."""
    net, _, _ = trained_net("float64", rng)
    opt = cdnn.Adam()
    opt.state_for(net.params)["v"][0] = -1.0
    net.save(tmp_path / "adam.safetensors", opt)
    with pytest.raises(ValueError, match="optimizer.v holds running squares"):
        cdnn.load(tmp_path / "adam.safetensors", optimizer=cdnn.Adam())


V1_FILES = {"sgd": cdnn.SGD, "adam": cdnn.Adam, "rmsprop": cdnn.RMSprop}


@pytest.mark.parametrize("name", V1_FILES)
def test_format_1_files_load_and_resume_as_the_version_that_wrote_them(name):
    """tests/data/v1_*: files of cdnn 3f99230 (optimizer.state1, state2), and the parameters
    and state that version reached one step later (tools/make_v1_model_files.py)"""
    path = f"{DATA}/v1_{name}.safetensors"
    with safe_open(path, framework="numpy") as f:
        assert f.metadata()["format_version"] == "1"
    opt = V1_FILES[name]()
    net = cdnn.load(path, optimizer=opt)
    assert sorted(opt.state) == sorted(opt.spec().state)
    old = load_file(path)
    for buffer, tensor in zip(opt.spec().state, ("optimizer.state1", "optimizer.state2")):
        np.testing.assert_array_equal(opt.state[buffer], old[tensor])
    then = np.load(f"{DATA}/v1_{name}_next.npz")
    cdnn.Trainer(net, opt, batch_size=8).fit(then["X"], then["y"], epochs=1, shuffle=False,
                                             verbose=0)
    np.testing.assert_array_equal(net.params, then["params"])
    for buffer, old_name in zip(opt.spec().state, ("state1", "state2")):
        np.testing.assert_array_equal(opt.state[buffer], then[old_name])


def test_a_resaved_format_1_file_names_its_state(tmp_path):
    opt = cdnn.RMSprop()
    net = cdnn.load(f"{DATA}/v1_rmsprop.safetensors", optimizer=opt)
    net.save(tmp_path / "v2.safetensors", opt)
    assert sorted(load_file(tmp_path / "v2.safetensors")) == sorted(
        ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
         "optimizer.square_avg", "optimizer.momentum"])
    again = cdnn.RMSprop()
    cdnn.load(tmp_path / "v2.safetensors", optimizer=again)
    for buffer in opt.state:
        np.testing.assert_array_equal(again.state[buffer], opt.state[buffer])


# --- saving: paths, permissions, interruptions (issue 13 rows 3, 4; issue 17) ----------------

def small_net():
    return cdnn.MLP([3, 4, 2], seed=0)


def test_save_into_a_missing_folder_names_the_path(tmp_path):
    path = tmp_path / "missing" / "x.safetensors"
    with pytest.raises(FileNotFoundError, match="x.safetensors") as error:
        small_net().save(path)
    assert error.value.filename == str(path) and ".tmp" not in str(error.value)


def test_save_follows_a_symlink_and_keeps_it(tmp_path):
    target, link = tmp_path / "real.safetensors", tmp_path / "link.safetensors"
    small_net().save(target)
    link.symlink_to(target)
    wider = cdnn.MLP([3, 7, 2], seed=1)
    wider.save(link)
    assert link.is_symlink() and cdnn.load(target).layer_sizes == (3, 7, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "real.safetensors"]


@pytest.mark.parametrize("make", ["fifo", "directory", "link to a fifo"])
def test_save_refuses_what_is_not_a_regular_file(make, tmp_path):
    """As root, save("/dev/null") replaced the device with a regular file; a FIFO stands in for
    the device here, so that a regression cannot break the machine running the tests."""
    import os
    import stat
    special = tmp_path / "special"
    if make == "directory":
        special.mkdir()
    else:
        os.mkfifo(special)
    path = special if make != "link to a fifo" else tmp_path / "link"
    if path != special:
        path.symlink_to(special)
    with pytest.raises(ValueError, match="not a regular file|a directory"):
        small_net().save(path)
    mode = os.stat(special).st_mode
    assert stat.S_ISDIR(mode) if make == "directory" else stat.S_ISFIFO(mode)
    assert not [p for p in tmp_path.iterdir() if ".cdnn-tmp-" in p.name]


def test_saved_files_honour_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        small_net().save(tmp_path / "a.safetensors")
        os.umask(0o077)
        small_net().save(tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.safetensors").stat().st_mode & 0o777 == 0o600
    (tmp_path / "a.safetensors").chmod(0o640)
    small_net().save(tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").stat().st_mode & 0o777 == 0o640


def test_a_failed_save_removes_its_temporary_and_keeps_the_old_file(tmp_path, monkeypatch):
    import os
    path = tmp_path / "m.safetensors"
    small_net().save(path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        cdnn.MLP([3, 9, 2]).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


KILLED_MID_SAVE = """
import os, signal, sys
from cdnn import io
fd, temporary = io._create_temporary(sys.argv[1], sys.argv[1])
os.write(fd, b"half a model")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_temporary_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    """Row 4: each SIGKILL during a save left a full-size temporary (safetensors' own)."""
    import subprocess
    import sys
    path = tmp_path / "m.safetensors"
    small_net().save(path)
    result = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(path)], timeout=60)
    assert result.returncode == -9
    orphans = [p.name for p in tmp_path.iterdir() if p.name != "m.safetensors"]
    assert len(orphans) == 1 and orphans[0].startswith(".m.safetensors.cdnn-tmp-")
    assert cdnn.load(path).layer_sizes == (3, 4, 2)   # the old model, whole
    small_net().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


SAVE_FOREVER = """
import sys, cdnn
net = cdnn.MLP([1000, 1000, 1000, 10], seed=0)   # 8 MB a file
print("ready", flush=True)
while True:
    net.save(sys.argv[1])
"""


def test_sigkill_mid_save_leaves_the_old_or_the_new_file(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / "m.safetensors"
    small_net().save(path)
    child = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.5)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert cdnn.load(path).layer_sizes in ((3, 4, 2), (1000, 1000, 1000, 10))
    small_net().save(path)   # and any temporary the kill left is gone after the next save
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
