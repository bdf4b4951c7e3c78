# Row-major matrix products over scipy's BLAS (no BLAS to build or link).
#
# BLAS is column-major. A row-major matrix is the transpose of the same memory read
# column-major, so the row-major C = op(A) @ op(B) is the column-major Cᵀ = op(B)ᵀ @ op(A)ᵀ:
# pass B before A and swap m and n.

from cython cimport floating
from libc.string cimport memset
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m×n) := alpha * op(A) @ op(B) + beta * C, all row-major; op(A) is m×k, op(B) k×n."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if m == 1 and k > 0:    # one row (a single prediction): gemv reads B once, gemm packs it
        row_times_matrix(trans_a, trans_b, n, k, alpha, a, lda, b, ldb, beta, c)
    elif m <= FEW_ROWS and k > 0 and not trans_a and not trans_b:
        few_rows_times_matrix(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    elif floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


# One row's product is bound by reading B. Where at least half of a is zeros (an image's
# background, a one-hot or bag-of-words input, a ReLU layer's output) reading only the rows of B
# that face a's nonzero entries is faster, though each row read costs more than in gemv (1.3-1.5×
# for widths 128 to 512). Against OpenBLAS's AVX-512 gemv, 784 inputs: MNIST rows (81 % zeros)
# 3.6 -> 1.5 µs for 128 outputs and 15.9 -> 4.1 µs for 512; half zeros 3.5 -> 3.4 and 15.9 -> 11.3.
# Batches are another matter: there OpenBLAS's GEMM keeps pace with this even on MNIST's zeros.
cdef enum:
    ROWS_PER_PASS = 256     # nonzero entries of a listed at a time, in a buffer on the stack


cdef inline void row_times_matrix(bint trans_a, bint trans_b, int n, int k, floating alpha,
                                  const floating* a, int lda, const floating* b, int ldb,
                                  floating beta, floating* c) noexcept nogil:
    """c (1×n) := alpha * op(a) @ op(B) + beta * c, as gemv on B read column-major: B (k×n)
    row-major is Bᵀ column-major, so c = Bᵀ·a is gemv 'N' on it (and 'T' for op(B) = Bᵀ)."""
    cdef char t = b'T' if trans_b else b'N'
    cdef int rows = k if trans_b else n, cols = n if trans_b else k
    cdef int inc_a = lda if trans_a else 1, inc_c = 1, j
    if beta == 0:   # gemv may scale c by 0 rather than overwrite it: NaN garbage would survive
        memset(c, 0, n * sizeof(floating))
    if not trans_a and not trans_b and 2 * count_zeros(a, k) >= k:
        if beta != 0 and beta != 1:
            for j in range(n):
                c[j] *= beta
        nonzero_rows_times_matrix(n, k, alpha, a, b, ldb, c)
    elif floating is float:
        sgemv(&t, &rows, &cols, &alpha, <float*>b, &ldb, <float*>a, &inc_a, &beta, c, &inc_c)
    else:
        dgemv(&t, &rows, &cols, &alpha, <double*>b, &ldb, <double*>a, &inc_a, &beta, c, &inc_c)


# A few rows (a prediction of a handful, a small batch's forward pass): OpenBLAS's GEMM packs
# all of B for them, so 2 rows of 784-512 float32 took 160 µs where one row's gemv took 49
# (one thread, 2026-12-02). Reading B once, four of its rows at a time while they sit in L1,
# serves every row of A; each row's sum runs in the same order whatever m is.
cdef enum:
    FEW_ROWS = 8


cdef inline void few_rows_times_matrix(int m, int n, int k, floating alpha, const floating* a,
                                       int lda, const floating* b, int ldb, floating beta,
                                       floating* c, int ldc) noexcept nogil:
    """C (m×n) := alpha * A @ B + beta * C, all row-major (A m×k, B k×n); a row of A whose four
    entries facing B's four rows are all zero skips them"""
    cdef int i = 0, r, j
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    cdef const floating* ar
    cdef floating* cr
    cdef floating x0, x1, x2, x3
    for r in range(m):
        cr = c + <Py_ssize_t>r * ldc
        if beta == 0:       # C may be garbage (NaN): overwrite it, do not scale it
            memset(cr, 0, n * sizeof(floating))
        elif beta != 1:
            for j in range(n):
                cr[j] *= beta
    while i + 4 <= k:
        r0, r1 = b + <Py_ssize_t>i * ldb, b + <Py_ssize_t>(i + 1) * ldb
        r2, r3 = b + <Py_ssize_t>(i + 2) * ldb, b + <Py_ssize_t>(i + 3) * ldb
        for r in range(m):
            ar = a + <Py_ssize_t>r * lda + i
            if ar[0] == 0 and ar[1] == 0 and ar[2] == 0 and ar[3] == 0:
                continue
            x0, x1, x2, x3 = alpha * ar[0], alpha * ar[1], alpha * ar[2], alpha * ar[3]
            cr = c + <Py_ssize_t>r * ldc
            for j in range(n):
                cr[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j]
        i += 4
    while i < k:
        r0 = b + <Py_ssize_t>i * ldb
        for r in range(m):
            x0 = alpha * a[<Py_ssize_t>r * lda + i]
            cr = c + <Py_ssize_t>r * ldc
            for j in range(n):
                cr[j] += x0 * r0[j]
        i += 1


cdef inline int count_zeros(const floating* a, int k) noexcept nogil:
    cdef int i, zeros = 0
    for i in range(k):
        zeros += a[i] == 0
    return zeros


cdef inline void nonzero_rows_times_matrix(int n, int k, floating alpha, const floating* a,
                                           const floating* b, int ldb,
                                           floating* c) noexcept nogil:
    """c (1×n) += alpha * a @ B (B k×n row-major), reading only the rows i of B where a[i] != 0,
    four at a time so that each pass over c serves four of them"""
    cdef int nonzero[ROWS_PER_PASS]
    cdef int start = 0, i, count, j
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    cdef floating x0, x1, x2, x3
    while start < k:
        count = 0
        for i in range(start, min(start + ROWS_PER_PASS, k)):
            nonzero[count] = i      # kept only if a[i] != 0: no branch to mispredict
            count += a[i] != 0
        i = 0
        while i + 4 <= count:
            r0, x0 = b + <Py_ssize_t>nonzero[i] * ldb, alpha * a[nonzero[i]]
            r1, x1 = b + <Py_ssize_t>nonzero[i + 1] * ldb, alpha * a[nonzero[i + 1]]
            r2, x2 = b + <Py_ssize_t>nonzero[i + 2] * ldb, alpha * a[nonzero[i + 2]]
            r3, x3 = b + <Py_ssize_t>nonzero[i + 3] * ldb, alpha * a[nonzero[i + 3]]
            for j in range(n):
                c[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j]
            i += 4
        while i < count:
            r0, x0 = b + <Py_ssize_t>nonzero[i] * ldb, alpha * a[nonzero[i]]
            for j in range(n):
                c[j] += x0 * r0[j]
            i += 1
        start += ROWS_PER_PASS
