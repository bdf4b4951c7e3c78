"""Sparse input: scipy.sparse matrices and arrays as the CSR rows the kernels read.

CSR is native; every other format is converted to CSR once, and nothing is ever densified.
Every check runs here, vectorised, before any kernel (or scipy's own converters, which trust
the structure they are given) reads the arrays: a malformed structure, an index out of range
or a non-finite stored value is a ValueError that names it. Explicit stored zeros are fine.
Unsorted column indices and duplicate entries are accepted with scipy's meaning (a duplicate
adds to its entry, as toarray() and sum_duplicates() do): the first layer sums every stored
entry's contribution, so neither needs a copy. The CSR arrays the kernels read are always the
engine's own (a copy, or what a conversion built), checked after they are taken; their size is
checked against the memory left before any copy or conversion.
"""
from __future__ import annotations

import contextlib

import numpy as np
import scipy.sparse as sp

# Kernel types: row offsets in intp (a matrix may hold more than 2^31 entries), column indices
# in C int (the network's widths are C ints, so every valid column index fits).
INDPTR, INDEX = np.intp, np.intc


def is_sparse(a) -> bool:
    return sp.issparse(a)


class SparseRows:
    """Validated CSR rows: indptr (offsets into indices and data, which a view of some of the
    rows shares, so indptr need not start at 0), indices and data of the network's dtype."""

    __slots__ = ("indptr", "indices", "data", "shape")

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int):
        self.indptr, self.indices, self.data = indptr, indices, data
        self.shape = (len(indptr) - 1, n_cols)

    @classmethod
    def buffer(cls, rows: int, entries: int, n_cols: int, dtype) -> SparseRows:
        """Room for a gathered batch: `rows` rows holding at most `entries` entries."""
        return cls(np.zeros(rows + 1, INDPTR), np.zeros(max(entries, 1), INDEX),
                   np.zeros(max(entries, 1), dtype), n_cols)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> SparseRows:
        """The rows in a slice (step 1), as a view."""
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("SparseRows take slices of consecutive rows only")
        return SparseRows(self.indptr[start:max(start, stop) + 1], self.indices, self.data,
                          self.shape[1])

    def mean_entries(self) -> float:
        return (self.indptr[-1] - self.indptr[0]) / max(len(self), 1)

    def batch_entries_bound(self, batch: int) -> int:
        """The most entries a batch of `batch` distinct rows can hold: those of the `batch`
        fullest rows (any permutation's batches fit in that)."""
        counts = np.diff(self.indptr)
        if batch < len(counts):
            counts = np.partition(counts, len(counts) - batch)[len(counts) - batch:]
        return int(counts.sum())

    def to_scipy(self) -> sp.csr_matrix:
        """A scipy CSR matrix of these rows (a copy of the view's arrays)."""
        first, last = self.indptr[0], self.indptr[-1]
        return sp.csr_matrix((self.data[first:last], self.indices[first:last],
                              self.indptr - first), shape=self.shape)


def as_sparse_rows(X, dtype, n_features: int) -> SparseRows:
    """A scipy.sparse X as validated CSR rows of dtype, in arrays of the engine's own: the
    kernels read them without the GIL, so neither a callback (X.indices[:] = 2**30 during fit)
    nor another thread may change them under the kernels, or between their check and their
    use. Labels are copied for the same reason (check_labels)."""
    if len(X.shape) != 2:
        raise ValueError(f"X must be 2-D, got a sparse array of shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
    n, m = X.shape
    if n == 0 or m == 0:
        raise ValueError(f"X is empty (shape {X.shape})")
    if m != n_features:
        raise ValueError(f"X has {m} features per row, the network expects {n_features}")
    check_room(X, dtype)
    converted = X.format != "csr"
    if converted:
        check_structure(X)      # the caller's, named; then the copy that scipy converts (its
        X = X.copy()            # converters release the GIL), which no other thread can change
        check_structure(X)
        X = X.tocsr()           # new arrays: the engine's own already
    own = (lambda a: a) if converted else np.copy     # copied once, before anything reads them
    indptr, indices, data = own(X.indptr), own(X.indices), own(X.data)
    # converted too: scipy does not check what it builds from LIL rows or DOK keys
    _check_compressed(indptr, indices, len(data), n, m, "row", "column")
    indptr = np.ascontiguousarray(indptr, dtype=INDPTR)
    stored = slice(0, int(indptr[-1]))
    indices = np.ascontiguousarray(indices[stored], dtype=INDEX)
    return SparseRows(indptr, indices, _values(data[stored], indptr, indices, dtype), m)


# Below this the CSR rows of an input never come near what the machine holds, and the check
# (reading /proc) would cost a single-row prediction tens of microseconds.
ROOM_CHECKED_FROM = 64 << 20


def check_room(X, dtype):
    """MemoryError, before any copy or conversion, when X's CSR rows (indptr, indices, values)
    would not fit in the memory this process can still allocate. A DIA or COO matrix of 2^31
    rows is a 1 KB file, but its CSR form holds an offset per row: 16 GiB."""
    n, m = X.shape
    nnz = X.nnz             # DIA and COO count theirs without allocating
    need = (n + 1) * np.dtype(INDPTR).itemsize + nnz * (
        np.dtype(INDEX).itemsize + np.dtype(dtype).itemsize)
    if need < ROOM_CHECKED_FROM:
        return
    room = available_memory()
    if room is not None and need > room:
        raise MemoryError(f"X ({X.format.upper()}, {n} × {m} with {nnz} stored values) takes "
                          f"{need / 2**30:.1f} GiB as the CSR rows cdnn reads, more than the "
                          f"{room / 2**30:.1f} GiB this process can still allocate")


def available_memory() -> int | None:
    """Bytes this process can still allocate, as far as Linux says (free memory, the cgroup's
    limit, RLIMIT_AS); None where it says nothing."""
    import resource
    room = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            room += [int(line.split()[1]) * 1024 for line in f
                     if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f, \
                open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                room.append(int(limit) - int(g.read()))
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/self/statm") as f:
                room.append(limit - int(f.read().split()[0]) * resource.getpagesize())
    return max(0, min(room)) if room else None


def check_structure(X):
    """The structure scipy's converters (and the kernels) will read, checked first."""
    n, m = X.shape
    if X.format == "csr":
        _check_compressed(X.indptr, X.indices, len(X.data), n, m, "row", "column")
    elif X.format == "csc":
        _check_compressed(X.indptr, X.indices, len(X.data), m, n, "column", "row")
    elif X.format == "coo":
        row, col = X.coords if hasattr(X, "coords") else (X.row, X.col)
        if not len(row) == len(col) == len(X.data):
            raise ValueError("X's row, col and data arrays differ in length")
        _check_range(row, n, "row")
        _check_range(col, m, "column")
    elif X.format == "bsr":
        r, c = X.blocksize
        _check_compressed(X.indptr, X.indices, len(X.data), n // r, m // c, "block row",
                          "block column")


def _check_compressed(indptr, indices, n_values: int, n_major: int, n_minor: int, major: str,
                      minor: str):
    """A compressed structure (CSR's rows, CSC's columns, BSR's block rows): n_major + 1
    offsets from 0, never decreasing, within indices and values; every index in
    [0, n_minor)."""
    if indptr.ndim != 1 or len(indptr) != n_major + 1:
        raise ValueError(f"X's indptr has {len(indptr)} entries for {n_major} {major}s; "
                         f"it needs {n_major + 1}")
    if indptr[0] != 0:
        raise ValueError(f"X's indptr must start at 0, got {indptr[0]}")
    steps = np.diff(indptr)
    if (steps < 0).any():
        i = int(np.argmax(steps < 0))
        raise ValueError(f"X's indptr is not monotonic: it decreases after {major} {i} "
                         f"({indptr[i]} then {indptr[i + 1]})")
    if indptr[-1] > min(len(indices), n_values):
        raise ValueError(f"X's indptr points to {indptr[-1]} stored entries, but X holds "
                         f"{min(len(indices), n_values)}")
    _check_range(indices[:indptr[-1]], n_minor, minor, lambda k: f" in {major} "
                 f"{int(np.searchsorted(indptr, k, side='right')) - 1}")


def _check_range(index, n: int, what: str, where=lambda k: ""):
    """Every index in [0, n); where(k) says which row (or column) holds entry k."""
    if len(index) == 0:
        return
    bad = (index < 0) | (index >= n)
    if bad.any():
        k = int(np.argmax(bad))
        kind = "a negative" if index[k] < 0 else "an out-of-range"
        raise ValueError(f"X holds {kind} {what} index ({index[k]}){where(k)}; X has {n} "
                         f"{what}s")


def _values(data: np.ndarray, indptr: np.ndarray, indices: np.ndarray, dtype) -> np.ndarray:
    """The stored values as dtype, every one finite (an overflow in the conversion named)."""
    with np.errstate(over="ignore"):    # an overflow is reported below, as an error
        values = np.ascontiguousarray(data, dtype=dtype)
    finite = np.isfinite(values)
    if not finite.all():
        k = int(np.argmin(finite))
        row = int(np.searchsorted(indptr, k, side="right")) - 1
        where = f"row {row}, column {indices[k]}"
        if np.isfinite(data[k]):
            raise ValueError(f"X holds {data[k]:g} at {where}, too large for "
                             f"{np.dtype(dtype).name}; scale the inputs")
        raise ValueError(f"X holds a non-finite value ({data[k]}) at {where}")
    return values
