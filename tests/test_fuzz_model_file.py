"""Fuzz cdnn.load: whatever the bytes, the only outcomes are a network with finite parameters or
a ValueError — never a crash, a hang, a huge allocation or another exception."""
import itertools
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cdnn

pytest.importorskip("safetensors")

# database=None: fuzzing leaves no .hypothesis/ directory in the working tree
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_model_file")


@pytest.fixture(scope="module")
def saved(workdir):
    """A valid model file (a small net with its Adam state), as bytes."""
    net = cdnn.MLP([3, 4, 2], seed=0, dropout=0.1)
    opt = cdnn.Adam(lr=0.01)
    cdnn.Trainer(net, opt, batch_size=4).fit(np.eye(3)[[0, 1, 2, 0]], [0, 1, 1, 0], verbose=0)
    path = workdir / "valid.safetensors"
    net.save(path, opt)
    return path.read_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def check_load(workdir, data: bytes):
    path = workdir / f"m{next(_names)}.safetensors"
    path.write_bytes(data)
    for optimizer in (None, cdnn.Adam()):
        try:
            net = cdnn.load(path, optimizer)
        except ValueError:
            continue
        assert isinstance(net, cdnn.MLP) and np.isfinite(net.params).all()
    path.unlink()


def test_the_valid_file_loads(workdir, saved):
    path = workdir / "valid_again.safetensors"
    path.write_bytes(saved)
    optimizer = cdnn.Adam()
    net = cdnn.load(path, optimizer)
    assert net.layer_sizes == (3, 4, 2) and optimizer.steps == 1


@FUZZ
@given(cut=st.integers(0, 10_000))
def test_truncated_files(workdir, saved, cut):
    check_load(workdir, saved[:cut % len(saved)])


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=8))
def test_mutated_bytes(workdir, saved, edits):
    data = bytearray(saved)
    for position, value in edits:
        data[position % len(data)] = value
    check_load(workdir, bytes(data))


@FUZZ
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4096)))
def test_wrong_header_length(workdir, saved, length):
    check_load(workdir, struct.pack("<Q", length) + saved[8:])


JUNK = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)
SIZES = st.lists(st.one_of(st.integers(-2, 8), st.just(2**31), st.just(2**40)), max_size=4)


@st.composite
def header_edits(draw):
    """A list of (where, what) edits of the header's JSON."""
    tensor = st.sampled_from(["layers.0.weight", "layers.0.bias", "layers.1.weight",
                              "layers.1.bias", "optimizer.m", "optimizer.v"])
    return draw(st.lists(st.one_of(
        st.tuples(st.just("dtype"), tensor,
                  st.sampled_from(["F64", "F32", "F16", "BF16", "I32", "U8", "BOOL", "X"])),
        st.tuples(st.just("shape"), tensor, SIZES),
        st.tuples(st.just("offsets"), tensor, st.lists(st.integers(-1, 2**64), max_size=3)),
        st.tuples(st.just("drop"), tensor, st.none()),
        st.tuples(st.just("rename"), tensor, st.text(max_size=12)),
        st.tuples(st.just("metadata"), st.sampled_from(["format", "format_version", "config",
                                                        "optimizer", "extra"]),
                  st.one_of(st.text(max_size=12), JUNK.map(json.dumps))),
        st.tuples(st.just("config"), st.sampled_from(["layer_sizes", "activation", "loss",
                                                      "init", "dtype", "seed", "dropout",
                                                      "l2", "leaky_slope", "bogus"]),
                  st.one_of(JUNK, SIZES)),
        st.tuples(st.just("optimizer"), st.sampled_from(["class", "hyperparameters", "steps",
                                                         "bogus"]), JUNK),
    ), min_size=1, max_size=4))


def apply(header: dict, edits) -> dict:
    meta = header["__metadata__"]
    for kind, key, value in edits:
        if kind in ("dtype", "shape") and key in header:
            header[key][kind] = value
        elif kind == "offsets" and key in header:
            header[key]["data_offsets"] = value
        elif kind == "drop":
            header.pop(key, None)
        elif kind == "rename" and key in header:
            header[value] = header.pop(key)
        elif kind == "metadata":
            meta[key] = value
        elif kind in ("config", "optimizer") and kind in meta:
            try:   # an earlier edit may have replaced the section with junk
                section = json.loads(meta[kind])
            except json.JSONDecodeError:
                continue
            if isinstance(section, dict):
                section[key] = value
                meta[kind] = json.dumps(section)
    return header


@FUZZ
@given(edits=header_edits())
def test_mutated_headers(workdir, saved, edits):
    header, body = split(saved)
    check_load(workdir, join(apply(header, edits), body))


@pytest.mark.parametrize("sizes", [[3, 2**30, 2], [3, 10**6, 2]])
def test_a_config_asking_for_a_huge_network_is_rejected_before_building_it(
        workdir, saved, sizes, monkeypatch):
    # the tensors are those of a 3-4-2 net; building the configured net first would allocate GBs
    import cdnn.io

    def no_build(**config):
        raise AssertionError("load built the network before checking the tensors' shapes")

    monkeypatch.setattr(cdnn.network, "MLP", no_build)
    header, body = split(saved)
    config = json.loads(header["__metadata__"]["config"])
    config["layer_sizes"] = sizes
    header["__metadata__"]["config"] = json.dumps(config)
    path = workdir / "huge.safetensors"
    path.write_bytes(join(header, body))
    with pytest.raises(ValueError, match="has shape"):
        cdnn.load(path)


def test_deeply_nested_metadata_is_a_value_error(workdir, saved):
    header, body = split(saved)
    header["__metadata__"]["config"] = "[" * 100_000 + "]" * 100_000
    path = workdir / "deep.safetensors"
    path.write_bytes(join(header, body))
    with pytest.raises(ValueError, match="not valid JSON"):
        cdnn.load(path)
