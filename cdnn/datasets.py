"""Datasets: an IDX (MNIST-format) reader, MNIST / Fashion-MNIST loaders with a verified
download cache, and the small UCI digits dataset shipped inside the package.

Pure Python + numpy; imports no other cdnn module (cdnn/__init__.py imports this one).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.resources
import math
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "load_digits", "cache_path"]

PathLike = Union[str, "os.PathLike[str]"]
Split = tuple[np.ndarray, np.ndarray]

# ---------------------------------------------------------------------------
# IDX reader
# ---------------------------------------------------------------------------

# IDX type codes; the data is big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAX_NDIM = 16  # real IDX files have 1-4; more means the header is garbage
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot expand data by more than ~1032:1, so a gzip file of n bytes holds at most
# this many times n bytes: a header declaring more is lying, and we refuse before reading.
_MAX_GZIP_RATIO = 1100
_CHUNK = 1 << 20


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file, raw or gzip-compressed, into a native-endian array of its shape."""
    path = Path(path)
    with open(path, "rb") as f:
        is_gzip = f.read(2) == _GZIP_MAGIC  # by content, not by file name
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        if not is_gzip:
            return _read_raw(f, size, path)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                return _read_gzip(gz, size, path)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path}: truncated or corrupt gzip data ({err})") from err


def _read_header(f, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Parse the IDX header: (dtype, shape, header length in bytes)."""
    magic = f.read(4)
    if len(magic) < 4:
        raise ValueError(f"{path}: too short for an IDX header ({len(magic)} bytes)")
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(f"{path}: bad magic number 0x{magic.hex()} (IDX starts with 00 00)")
    code, ndim = magic[2], magic[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02X}")
    if not 1 <= ndim <= _MAX_NDIM:
        raise ValueError(f"{path}: header declares {ndim} dimensions (expected 1..{_MAX_NDIM})")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise ValueError(f"{path}: header truncated ({ndim} dimension sizes declared)")
    shape = struct.unpack(f">{ndim}I", raw)
    dtype = _IDX_DTYPES[code]
    if 0 in shape and math.prod(d for d in shape if d) * dtype.itemsize >= 2**62:
        # empty, yet too large for numpy to shape (it multiplies the non-zero sizes)
        raise ValueError(f"{path}: header declares shape {shape}, too large for an array")
    return dtype, shape, 4 + 4 * ndim


def _read_raw(f, size: int, path: Path) -> np.ndarray:
    dtype, shape, header = _read_header(f, path)
    nbytes = dtype.itemsize * math.prod(shape)
    _check_length(size - header, nbytes, shape, path)  # before allocating anything
    buf = bytearray(nbytes)
    if f.readinto(buf) != nbytes:  # the file shrank under us
        raise ValueError(f"{path}: data truncated while reading")
    return _to_array(buf, dtype, shape)


def _read_gzip(gz: gzip.GzipFile, size: int, path: Path) -> np.ndarray:
    dtype, shape, _ = _read_header(gz, path)
    nbytes = dtype.itemsize * math.prod(shape)
    if nbytes > _MAX_GZIP_RATIO * size:
        raise ValueError(f"{path}: header declares shape {shape} ({nbytes} bytes), "
                         f"more than a {size}-byte gzip file can hold")
    # Bounded, chunked read: a lying header cannot make us allocate more than is there.
    buf = _read_at_most(gz, nbytes + 1)
    _check_length(len(buf), nbytes, shape, path)
    return _to_array(buf, dtype, shape)


def _read_at_most(f, limit: int) -> bytearray:
    buf = bytearray()
    while len(buf) < limit:
        chunk = f.read(min(_CHUNK, limit - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _check_length(have: int, want: int, shape: tuple[int, ...], path: Path) -> None:
    if have < want:
        raise ValueError(f"{path}: data truncated: header declares shape {shape} "
                         f"({want} bytes) but only {have} bytes follow")
    if have > want:
        raise ValueError(f"{path}: extra data: header declares shape {shape} "
                         f"({want} bytes) but more bytes follow")


def _to_array(buf: bytearray, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


# ---------------------------------------------------------------------------
# MNIST-format datasets from a directory
# ---------------------------------------------------------------------------

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_files(directory: Path, names: tuple[str, ...]) -> list[Path]:
    """Each name as a raw or .gz file in directory; FileNotFoundError lists all missing."""
    found, missing = [], []
    for name in names:
        candidates = [directory / name, directory / (name + ".gz")]
        hits = [p for p in candidates if p.is_file()]
        found.append(hits[0] if hits else None)
        if not hits:
            missing.append(" or ".join(p.name for p in candidates))
    if missing:
        raise FileNotFoundError(f"missing in {directory}: " + ", ".join(missing))
    return found


def _images_and_labels(images: Path, labels: Path, image_shape: tuple[int, int],
                       scale: float, n_classes: int) -> Split:
    """Read and validate one split; X float32 (n, h*w) in [0, 1], y int64."""
    X, y = read_idx(images), read_idx(labels)
    if X.dtype != np.uint8 or X.ndim != 3 or X.shape[1:] != image_shape:
        raise ValueError(f"{images}: expected uint8 images of shape (n, {image_shape[0]}, "
                         f"{image_shape[1]}), got {X.dtype} {X.shape}")
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"{labels}: expected 1-D integer labels, got {y.dtype} {y.shape}")
    if len(X) != len(y):
        raise ValueError(f"{images} has {len(X)} images but {labels} has {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{labels}: labels must be in 0..{n_classes - 1}, "
                         f"found {y.min()}..{y.max()}")
    X = X.reshape(len(X), -1).astype(np.float32)
    X /= np.float32(scale)
    return X, y.astype(np.int64)


def _load_mnist_dir(directory: PathLike) -> tuple[Split, Split]:
    directory = Path(directory)
    train_x, train_y, test_x, test_y = _find_files(directory, MNIST_FILES)
    train = _images_and_labels(train_x, train_y, (28, 28), 255.0, 10)
    test = _images_and_labels(test_x, test_y, (28, 28), 255.0, 10)
    return train, test


# ---------------------------------------------------------------------------
# Download cache
# ---------------------------------------------------------------------------

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
URL_ENV = {"mnist": "CDNN_MNIST_URL", "fashion_mnist": "CDNN_FASHION_MNIST_URL"}

# Expected SHA-256 per dataset and file. A key without ".gz" is the hash of the
# *uncompressed* content (independent of how a mirror compressed it); a key ending in ".gz"
# is the hash of the .gz bytes as published. Fashion-MNIST's uncompressed hashes are not
# published anywhere we could check, so it is verified against its published .gz hashes
# (the values two independent public downloaders agree on).
# Tests monkeypatch this table.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte":
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte":
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte":
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte":
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz":
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
        "train-labels-idx1-ubyte.gz":
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
        "t10k-images-idx3-ubyte.gz":
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
        "t10k-labels-idx1-ubyte.gz":
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
    },
}
TIMEOUT = 60.0  # seconds without data before a download gives up


def cache_path(dataset: str = "", cache_dir: PathLike | None = None) -> Path:
    """The download cache: `cache_dir`, else $CDNN_DATA, else the platform's user cache."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("CDNN_DATA"):
        root = Path(os.environ["CDNN_DATA"])
    elif sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        root = Path(local) / "cdnn" / "Cache"
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches" / "cdnn"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdnn"
    return root / dataset if dataset else root


def _base_urls(dataset: str, base_url: str | None) -> tuple[str, ...]:
    url = base_url or os.environ.get(URL_ENV[dataset])
    return (url,) if url else MIRRORS[dataset]


def _fetch_dataset(dataset: str, cache: PathLike | None, base_url: str | None,
                   verbose: bool) -> Path:
    """Make sure the four verified .gz files are in the cache; return its directory."""
    directory = cache_path(dataset, cache)
    directory.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        target = directory / (name + ".gz")
        if not target.is_file():  # only verified files are ever renamed into place
            _download(name, _base_urls(dataset, base_url), target, SHA256[dataset], verbose)
    return directory


class DownloadError(OSError):
    """No mirror gave the file; `file` names it and `errors` holds one line per mirror tried
    (so that the command line can name its own offline option instead of path=)."""

    def __init__(self, file: str, errors: list[str]):
        super().__init__(f"could not download {file} (pass path= to a directory that holds "
                         "the files to work offline):\n  " + "\n  ".join(errors))
        self.file, self.errors = file, errors


def _download(name: str, base_urls: tuple[str, ...], target: Path,
              hashes: dict[str, str], verbose: bool) -> None:
    errors = []
    for base in base_urls:
        url = base.rstrip("/") + "/" + name + ".gz"
        try:
            _download_verified(url, name, target, hashes, verbose)
            return
        except OSError as err:  # URLError, HTTPError, timeouts: try the next mirror
            errors.append(f"{url}: {err}")
    raise DownloadError(f"{name}.gz", errors)


def _download_verified(url: str, name: str, target: Path, hashes: dict[str, str],
                       verbose: bool) -> None:
    # Download into a temp file in the same directory, verify, then rename: the cache
    # never holds a partial or unverified file, even if we are killed mid-way.
    import urllib.request  # here, not at the top: keeps `import cdnn` fast

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            _copy_with_progress(resp, out, url, name, verbose)
        _verify(Path(tmp), url, name, hashes)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _copy_with_progress(resp, out, url: str, name: str, verbose: bool) -> None:
    import http.client

    length = resp.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    bar = _progress_bar(total, name, verbose)
    received = 0
    try:
        while chunk := resp.read(_CHUNK):
            out.write(chunk)
            received += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    except http.client.IncompleteRead as err:
        raise ValueError(f"{url}: truncated download ({err})") from err
    finally:
        if bar is not None:
            bar.close()
    # http.client returns b"" on a dropped connection instead of raising, so check here.
    if total is not None and received != total:
        raise ValueError(f"{url}: truncated download: got {received} of {total} bytes")


def _progress_bar(total: int | None, name: str, verbose: bool):
    if not verbose or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm  # lazily: only needed when downloading interactively
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False)


def _verify(path: Path, url: str, name: str, hashes: dict[str, str]) -> None:
    compressed = name + ".gz" in hashes  # see SHA256: which bytes the hash is of
    expected = hashes[name + ".gz"] if compressed else hashes[name]
    try:
        digest = _sha256(path, gunzip=not compressed)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise ValueError(f"{url}: truncated or corrupt gzip download ({err})") from err
    if digest != expected:
        raise ValueError(f"{url}: SHA-256 mismatch (got {digest}, expected {expected}); "
                         "the download is corrupt or truncated")


def _sha256(path: Path, gunzip: bool) -> str:
    h = hashlib.sha256()
    with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------


def load_mnist(path: PathLike | None = None, *, cache_dir: PathLike | None = None,
               base_url: str | None = None, verbose: bool = True) -> tuple[Split, Split]:
    """MNIST as ((X_train, y_train), (X_test, y_test)); X float32 (n, 784) in [0, 1], y int64.

    `path`: a directory holding the four IDX files (raw or .gz). Without it the files are
    downloaded (once, SHA-256 verified) into the cache directory.
    """
    if path is None:
        path = _fetch_dataset("mnist", cache_dir, base_url, verbose)
    return _load_mnist_dir(path)


def load_fashion_mnist(path: PathLike | None = None, *, cache_dir: PathLike | None = None,
                       base_url: str | None = None,
                       verbose: bool = True) -> tuple[Split, Split]:
    """Fashion-MNIST, same files, format and return value as `load_mnist`."""
    if path is None:
        path = _fetch_dataset("fashion_mnist", cache_dir, base_url, verbose)
    return _load_mnist_dir(path)


DIGITS_FILES = (
    "digits-train-images.idx.gz",
    "digits-train-labels.idx.gz",
    "digits-test-images.idx.gz",
    "digits-test-labels.idx.gz",
)


def load_digits() -> tuple[Split, Split]:
    """UCI handwritten digits shipped with cdnn (1797 8x8 images, fixed 80/20 split).

    Returns ((X_train, y_train), (X_test, y_test)); X float32 (n, 64) in [0, 1], y int64.
    """
    data = importlib.resources.files("cdnn") / "data"
    with contextlib.ExitStack() as stack:  # as_file: real paths even from a zipped install
        train_x, train_y, test_x, test_y = (
            stack.enter_context(importlib.resources.as_file(data / n)) for n in DIGITS_FILES)
        train = _images_and_labels(train_x, train_y, (8, 8), 16.0, 10)
        test = _images_and_labels(test_x, test_y, (8, 8), 16.0, 10)
    return train, test
