"""Tests for cdnn.datasets: IDX reader, MNIST-format loaders, download cache, shipped digits."""

import functools
import gzip
import hashlib
import http.server
import struct
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cdnn import datasets
from cdnn.datasets import load_digits, load_fashion_mnist, load_mnist, read_idx

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
NAMES = datasets.MNIST_FILES
CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    """Serialise arr as IDX: 00 00 type ndim, big-endian dims, big-endian data."""
    code = CODES[arr.dtype.str[1:]]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def synthetic_mnist(n_train=20, n_test=7, seed=0, shape=(28, 28)):
    rng = np.random.default_rng(seed)
    arrays = []
    for n in (n_train, n_test):
        arrays.append(rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
        arrays.append(rng.integers(0, 10, size=n, dtype=np.uint8))
    return dict(zip(NAMES, arrays, strict=True))


def write_mnist_dir(directory: Path, arrays: dict, gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write(directory / (name + (".gz" if gz else "")), idx_bytes(arr), gz)
    return directory


def check_against(loaded, arrays):
    (X_train, y_train), (X_test, y_test) = loaded
    for X, y, images, labels in ((X_train, y_train, *list(arrays.values())[:2]),
                                 (X_test, y_test, *list(arrays.values())[2:])):
        assert X.dtype == np.float32 and y.dtype == np.int64
        assert X.shape == (len(images), images[0].size)
        np.testing.assert_allclose(X, images.reshape(len(images), -1) / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)


# ---------------------------------------------------------------------------
# read_idx: round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2), (0, 28, 28)])
def test_round_trip(tmp_path, dtype, gz, shape):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    out = read_idx(write(tmp_path / "a.idx", idx_bytes(arr), gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.int32).reshape(3, 4)
    gz_named_raw = write(tmp_path / "plain.idx", idx_bytes(arr), gz=True)
    raw_named_gz = write(tmp_path / "packed.gz", idx_bytes(arr), gz=False)
    np.testing.assert_array_equal(read_idx(gz_named_raw), arr)
    np.testing.assert_array_equal(read_idx(raw_named_gz), arr)


def test_result_is_writable(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    for gz in (False, True):
        out = read_idx(write(tmp_path / f"w{gz}", idx_bytes(arr), gz))
        out[0] = 7  # a read-only buffer would raise here


# ---------------------------------------------------------------------------
# read_idx: malformed input
# ---------------------------------------------------------------------------

GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
MALFORMED = {
    "empty": (b"", "too short"),
    "short header": (b"\x00\x00", "too short"),
    "bad magic": (b"\x01\x02" + GOOD[2:], "bad magic"),
    "unknown type": (b"\x00\x00\x07\x03" + GOOD[4:], "unknown IDX type code 0x07"),
    "zero dims": (b"\x00\x00\x08\x00" + GOOD[4:], "0 dimensions"),
    "absurd dims": (b"\x00\x00\x08\xc8" + GOOD[4:], "200 dimensions"),
    "truncated dims": (GOOD[:10], "header truncated"),
    "truncated data": (GOOD[:-1], "data truncated"),
    "extra data": (GOOD + b"\x00", "extra data"),
    "huge dims": (b"\x00\x00\x0e\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)
                  + GOOD[16:], "data truncated"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed(tmp_path, case, gz):
    data, message = MALFORMED[case]
    if gz and case == "huge dims":
        message = "gzip file can hold"  # refused before decompressing anything
    path = write(tmp_path / "bad-file.idx", data, gz)
    with pytest.raises(ValueError, match=message) as err:
        read_idx(path)
    assert "bad-file.idx" in str(err.value)


def test_lying_gzip_header_within_ratio(tmp_path):
    # Claims 100x the data: under the gzip ratio bound, so it must be caught by the read.
    data = b"\x00\x00\x08\x01" + struct.pack(">I", 100 * 50) + bytes(50)
    with pytest.raises(ValueError, match="data truncated"):
        read_idx(write(tmp_path / "liar.gz", data, gz=True))


@pytest.mark.parametrize("cut", [5, 15, 0.5, -4])
def test_truncated_gzip(tmp_path, cut):
    packed = gzip.compress(GOOD * 50)
    n = int(len(packed) * cut) if isinstance(cut, float) else cut
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[:n])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    packed = bytearray(gzip.compress(GOOD))
    packed[-6] ^= 0xFF  # inside the CRC/length trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------
# load_mnist / load_fashion_mnist from a directory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loader", [load_mnist, load_fashion_mnist])
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_load_from_directory(tmp_path, loader, gz):
    arrays = synthetic_mnist()
    check_against(loader(write_mnist_dir(tmp_path, arrays, gz)), arrays)


def test_load_mixed_raw_and_gzip(tmp_path):
    arrays = synthetic_mnist()
    write_mnist_dir(tmp_path, dict(list(arrays.items())[:2]), gz=True)
    write_mnist_dir(tmp_path, dict(list(arrays.items())[2:]), gz=False)
    check_against(load_mnist(str(tmp_path)), arrays)


def test_mismatched_counts(tmp_path):
    arrays = synthetic_mnist()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    with pytest.raises(ValueError, match="20 images but .* 19 labels"):
        load_mnist(write_mnist_dir(tmp_path, arrays, gz=True))


def test_labels_out_of_range(tmp_path):
    arrays = synthetic_mnist()
    arrays["t10k-labels-idx1-ubyte"][3] = 10
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        load_mnist(write_mnist_dir(tmp_path, arrays, gz=False))


def test_wrong_image_shape(tmp_path):
    arrays = synthetic_mnist(shape=(28, 27))
    with pytest.raises(ValueError, match="shape"):
        load_mnist(write_mnist_dir(tmp_path, arrays, gz=False))


def test_missing_files(tmp_path):
    arrays = synthetic_mnist()
    del arrays["t10k-images-idx3-ubyte"]
    write_mnist_dir(tmp_path, arrays, gz=True)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


def test_real_mnist():
    if not all((MNIST_DIR / (n + ".gz")).exists() or (MNIST_DIR / n).exists() for n in NAMES):
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    (X_train, y_train), (X_test, y_test) = load_mnist(MNIST_DIR)
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert X_train.min() == 0.0 and X_train.max() == 1.0
    assert 0.0 <= X_test.min() and X_test.max() <= 1.0
    # the canonical class counts
    assert np.bincount(y_train).tolist() == [5923, 6742, 5958, 6131, 5842,
                                             5421, 5918, 6265, 5851, 5949]
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982,
                                            892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------
# load_digits (shipped in the package)
# ---------------------------------------------------------------------------


def test_load_digits():
    (X_train, y_train), (X_test, y_test) = load_digits()
    assert X_train.shape == (1438, 64) and X_test.shape == (359, 64)
    assert len(X_train) + len(X_test) == 1797
    assert X_train.dtype == X_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
    # raw values are the counts 0..16
    np.testing.assert_array_equal(X_train * 16, np.round(X_train * 16))
    assert set(y_train) == set(y_test) == set(range(10))
    # stratified: every class is about 20 % test
    frac = np.bincount(y_test) / (np.bincount(y_train) + np.bincount(y_test))
    assert np.all(np.abs(frac - 0.2) < 0.02)


# ---------------------------------------------------------------------------
# downloads from a local HTTP server
# ---------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; counts requests; under /cut/ it promises more than it sends."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / "good" / self.path[5:]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(root dir, base url, request log) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "srv"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    httpd.daemon_threads = True
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def publish(root: Path, sub: str, arrays: dict) -> dict:
    """Write .gz files under root/sub; return SHA-256 of uncompressed and of .gz bytes."""
    hashes = {}
    for name, arr in arrays.items():
        raw = idx_bytes(arr)
        packed = gzip.compress(raw)
        (root / sub).mkdir(exist_ok=True)
        (root / sub / (name + ".gz")).write_bytes(packed)
        hashes[name] = hashlib.sha256(raw).hexdigest()
        hashes[name + ".gz"] = hashlib.sha256(packed).hexdigest()
    return hashes


def only(hashes: dict, gz: bool) -> dict:
    return {k: v for k, v in hashes.items() if k.endswith(".gz") == gz}


def cached_files(cache: Path) -> list:
    return sorted(p.name for p in cache.rglob("*") if p.is_file())


def test_download_and_cache(server, tmp_path, monkeypatch):
    root, url, requests = server
    arrays = synthetic_mnist()
    monkeypatch.setitem(datasets.SHA256, "mnist", only(publish(root, "good", arrays), gz=False))
    cache = tmp_path / "cache"
    check_against(load_mnist(cache_dir=cache, base_url=url + "/good/", verbose=False), arrays)
    assert len(requests) == 4
    assert cached_files(cache) == sorted(n + ".gz" for n in NAMES)
    assert (cache / "mnist").is_dir()  # one subfolder per dataset
    check_against(load_mnist(cache_dir=cache, base_url=url + "/good"), arrays)
    assert len(requests) == 4  # served from the cache


def test_download_fashion_checks_gz_hashes(server, tmp_path, monkeypatch):
    root, url, requests = server
    arrays = synthetic_mnist(seed=3)
    hashes = publish(root, "good", arrays)
    monkeypatch.setitem(datasets.SHA256, "fashion_mnist", only(hashes, gz=True))
    monkeypatch.setenv("CDNN_FASHION_MNIST_URL", url + "/good/")
    cache = tmp_path / "cache"
    check_against(load_fashion_mnist(cache_dir=cache, verbose=False), arrays)
    assert cached_files(cache / "fashion_mnist") == sorted(n + ".gz" for n in NAMES)


@pytest.mark.parametrize("dataset, loader, gz", [("mnist", load_mnist, False),
                                                  ("fashion_mnist", load_fashion_mnist, True)])
def test_download_corrupted(server, tmp_path, monkeypatch, dataset, loader, gz):
    # MNIST checks the uncompressed content's hash, Fashion-MNIST the published .gz hash
    root, url, _ = server
    hashes = publish(root, "good", synthetic_mnist())
    publish(root, "bad", synthetic_mnist(seed=99))  # valid gzip, different content
    monkeypatch.setitem(datasets.SHA256, dataset, only(hashes, gz=gz))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        loader(cache_dir=cache, base_url=url + "/bad/", verbose=False)
    assert cached_files(cache) == []


def test_download_truncated_file(server, tmp_path, monkeypatch):
    root, url, _ = server
    hashes = publish(root, "good", synthetic_mnist())
    (root / "short").mkdir()
    for name in NAMES:  # served whole, but the files themselves are cut short
        packed = (root / "good" / (name + ".gz")).read_bytes()
        (root / "short" / (name + ".gz")).write_bytes(packed[: len(packed) // 2])
    monkeypatch.setitem(datasets.SHA256, "mnist", only(hashes, gz=False))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(cache_dir=cache, base_url=url + "/short/", verbose=False)
    assert cached_files(cache) == []


def test_download_connection_cut(server, tmp_path, monkeypatch):
    root, url, _ = server
    hashes = publish(root, "good", synthetic_mnist())
    monkeypatch.setitem(datasets.SHA256, "mnist", only(hashes, gz=False))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="truncated download"):
        load_mnist(cache_dir=cache, base_url=url + "/cut/", verbose=False)
    assert cached_files(cache) == []


def test_download_not_found(server, tmp_path):
    _, url, _ = server
    with pytest.raises(OSError, match="could not download"):
        load_mnist(cache_dir=tmp_path / "cache", base_url=url + "/missing/", verbose=False)
    assert cached_files(tmp_path / "cache") == []


def test_env_vars_choose_cache_and_mirror(server, tmp_path, monkeypatch):
    root, url, requests = server
    arrays = synthetic_mnist(seed=5)
    monkeypatch.setitem(datasets.SHA256, "mnist", only(publish(root, "good", arrays), gz=False))
    monkeypatch.setenv("CDNN_DATA", str(tmp_path / "envcache"))
    monkeypatch.setenv("CDNN_MNIST_URL", url + "/good/")
    check_against(load_mnist(verbose=False), arrays)
    assert cached_files(tmp_path / "envcache" / "mnist") == sorted(n + ".gz" for n in NAMES)
    assert len(requests) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG is Linux's convention")
def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("CDNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert datasets.cache_path("mnist") == tmp_path / "cdnn" / "mnist"
    monkeypatch.setenv("CDNN_DATA", str(tmp_path / "x"))
    assert datasets.cache_path("mnist") == tmp_path / "x" / "mnist"
    assert datasets.cache_path("mnist", tmp_path / "y") == tmp_path / "y" / "mnist"
