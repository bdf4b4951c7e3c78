# Inverted dropout with a counter-based mask: the mask of a unit is a hash of (seed, step, row,
# unit), so the backward pass regenerates it instead of storing it, and the result does not
# depend on how rows are split across threads. a, out and d are (rows, cols), and are the rows
# row0, row0 + 1, … of the batch.

from cython cimport floating
from libc.stdint cimport uint64_t


cdef inline double uniform(uint64_t seed, uint64_t step, uint64_t index) noexcept nogil:
    """A uniform draw in [0, 1) from splitmix64 of (seed, step, index)"""
    cdef uint64_t x = seed + 0x9E3779B97F4A7C15ULL * (step + 1) + 0xD1B54A32D192ED03ULL * index
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL
    x = x ^ (x >> 31)
    return (x >> 11) * (1.0 / 9007199254740992.0)      # 53 random bits / 2⁵³


# Threads that share rows each take a range of the columns (units), first:last.
cdef inline void dropout_forward(floating* out, const floating* a, Py_ssize_t rows,
                                 Py_ssize_t cols, Py_ssize_t first, Py_ssize_t last,
                                 Py_ssize_t row0, double rate, uint64_t seed,
                                 uint64_t step) noexcept nogil:
    """out[:, first:last] := a · keep / (1 − rate), keep ~ Bernoulli(1 − rate)"""
    cdef Py_ssize_t i, j, row
    cdef floating scale = 1 / (1 - rate)
    for i in range(rows):
        row = i * cols
        for j in range(first, last):
            out[row + j] = (a[row + j] * scale
                            if uniform(seed, step, (row0 + i) * cols + j) >= rate else 0)


cdef inline void dropout_backward(floating* d, Py_ssize_t rows, Py_ssize_t cols,
                                  Py_ssize_t first, Py_ssize_t last, Py_ssize_t row0,
                                  double rate, uint64_t seed, uint64_t step) noexcept nogil:
    """d[:, first:last] := d · keep / (1 − rate), the same mask as the forward pass"""
    dropout_forward(d, d, rows, cols, first, last, row0, rate, seed, step)
