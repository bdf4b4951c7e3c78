"""Fuzz read_idx: whatever the bytes, the only outcomes are an ndarray or a ValueError."""

import gzip
import itertools
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdnn.datasets import read_idx

CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}
# database=None: fuzzing leaves no .hypothesis/ directory in the working tree
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
_names = itertools.count()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_idx")


def idx_bytes(dtype: str, shape: tuple, seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) *
                                                 np.dtype(dtype).itemsize, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, CODES[dtype], len(shape))
    return header + struct.pack(f">{len(shape)}I", *shape) + data.tobytes()


valid_files = st.builds(
    idx_bytes,
    dtype=st.sampled_from(list(CODES)),
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4).map(tuple),
    seed=st.integers(0, 2**16),
)


def outcome(workdir, data: bytes):
    path = workdir / f"f{next(_names)}.idx"
    path.write_bytes(data)
    try:
        out = read_idx(path)
    except ValueError as err:
        assert path.name in str(err)  # every error names the file
        return err
    finally:
        path.unlink()
    assert isinstance(out, np.ndarray) and out.dtype.isnative
    return out


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(workdir, data):
    outcome(workdir, data)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_after_gzip_magic(workdir, data):
    outcome(workdir, b"\x1f\x8b" + data)


@FUZZ
@given(data=st.binary(max_size=100))
def test_random_bytes_after_idx_magic(workdir, data):
    outcome(workdir, b"\x00\x00" + data)


@FUZZ
@given(data=valid_files, gz=st.booleans(), cut=st.floats(0, 1))
def test_truncated(workdir, data, gz, cut):
    blob = gzip.compress(data) if gz else data
    n = int(len(blob) * cut)
    out = outcome(workdir, blob[:n])
    if n < len(blob) and not gz:
        assert isinstance(out, ValueError)


@FUZZ
@given(data=valid_files, gz=st.booleans(), st_data=st.data())
def test_mutated(workdir, data, gz, st_data):
    blob = bytearray(gzip.compress(data) if gz else data)
    edits = st_data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(0, 255)),
                                  min_size=1, max_size=4))
    for pos, value in edits:
        blob[pos] = value
    outcome(workdir, bytes(blob))


@FUZZ
@given(data=valid_files, gz=st.booleans(), tail=st.binary(min_size=1, max_size=50))
def test_appended(workdir, data, gz, tail):
    blob = gzip.compress(data) if gz else data
    out = outcome(workdir, blob + tail)
    if not gz:
        assert isinstance(out, ValueError)  # extra data after a raw file


@FUZZ
@given(data=valid_files, gz=st.booleans())
def test_valid_round_trip(workdir, data, gz):
    out = outcome(workdir, gzip.compress(data) if gz else data)
    assert isinstance(out, np.ndarray)
    assert out.tobytes() == np.frombuffer(data, dtype=out.dtype.newbyteorder(">"),
                                          offset=len(data) - out.nbytes).astype(out.dtype).tobytes()


@pytest.mark.parametrize("shape", [(2902458371, 3774873606, 6, 0), (4211081217, 12347398, 6422529, 0)])
def test_empty_shape_too_large_for_numpy(workdir, shape):
    # found by test_mutated: no data is needed for an empty array, but numpy multiplies the
    # non-zero sizes to shape it and refuses
    header = struct.pack(">BBBB", 0, 0, CODES[">f8"], len(shape)) + struct.pack(
        f">{len(shape)}I", *shape)
    for blob in (header, gzip.compress(header)):
        assert isinstance(outcome(workdir, blob), ValueError)
