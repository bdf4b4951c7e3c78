"""Regenerate cdnn/data/digits-*.idx.gz from scikit-learn's copy of the UCI digits data.

    python3 -m venv /tmp/dsenv && /tmp/dsenv/bin/pip install numpy scikit-learn
    /tmp/dsenv/bin/python tools/make_digits.py [path/to/digits.csv.gz]

The split is stratified 80/20, made once with a fixed seed, so rerunning this gives
byte-identical files. scikit-learn is only a source of the CSV, not a cdnn dependency.
"""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

SEED = 20240601
TEST_FRACTION = 0.2
OUT = Path(__file__).resolve().parents[1] / "cdnn" / "data"


def default_source() -> Path:
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"


def stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row indices (train, test): TEST_FRACTION of each class goes to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        test.extend(rows[: round(TEST_FRACTION * len(rows))])
    test = np.sort(np.array(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def write_idx_gz(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    # mtime=0 and no file name in the gzip header: the output depends on the data only.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               compresslevel=9, mtime=0) as gz:
        gz.write(header + arr.astype(np.uint8).tobytes())


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else default_source()
    data = np.loadtxt(src, delimiter=",", dtype=np.int64)
    X, y = data[:, :64], data[:, 64]
    assert X.shape == (1797, 64) and X.min() >= 0 and X.max() <= 16 and set(y) == set(range(10))
    train, test = stratified_split(y, SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", train), ("test", test)):
        write_idx_gz(OUT / f"digits-{split}-images.idx.gz", X[rows].reshape(-1, 8, 8))
        write_idx_gz(OUT / f"digits-{split}-labels.idx.gz", y[rows])
        print(f"{split}: {len(rows)} rows, per class {np.bincount(y[rows]).tolist()}")


if __name__ == "__main__":
    main()
