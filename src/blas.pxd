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
# that face a's nonzero entries is faster, though each row read costs more than in gemv
# (bench/RESULTS.md, "One row: skipping zeros").
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
    cdef int inc_a = lda if trans_a else 1, inc_c = 1
    if not trans_a and not trans_b and 2 * count_zeros(a, k) >= k:
        scale_row(c, n, beta)
        nonzero_rows_times_matrix(n, k, alpha, a, b, ldb, c)
        return
    if beta == 0:   # gemv may scale c by 0 rather than overwrite it: NaN garbage would survive
        memset(c, 0, n * sizeof(floating))
    if floating is float:
        sgemv(&t, &rows, &cols, &alpha, <float*>b, &ldb, <float*>a, &inc_a, &beta, c, &inc_c)
    else:
        dgemv(&t, &rows, &cols, &alpha, <double*>b, &ldb, <double*>a, &inc_a, &beta, c, &inc_c)


# A few rows (a prediction of a handful, a small batch's forward pass): OpenBLAS's GEMM packs
# all of B for them, so 2 rows cost about three times one row's gemv (bench/RESULTS.md, "A few
# rows"). Reading B once, four of its rows at a time while they sit in L1,
# serves every row of A; each row's sum runs in the same order whatever m is.
cdef enum:
    FEW_ROWS = 8


cdef inline void few_rows_times_matrix(int m, int n, int k, floating alpha, const floating* a,
                                       int lda, const floating* b, int ldb, floating beta,
                                       floating* c, int ldc) noexcept nogil:
    """C (m×n) := alpha * A @ B + beta * C, all row-major (A m×k, B k×n); a row of A whose four
    entries facing B's four rows are all zero skips them"""
    cdef int i = 0, r
    cdef const floating* ar
    cdef const floating* bi
    for r in range(m):
        scale_row(c + <Py_ssize_t>r * ldc, n, beta)
    while i + 4 <= k:
        bi = b + <Py_ssize_t>i * ldb
        for r in range(m):
            ar = a + <Py_ssize_t>r * lda + i
            if ar[0] != 0 or ar[1] != 0 or ar[2] != 0 or ar[3] != 0:
                add_rows(c + <Py_ssize_t>r * ldc, n, bi, bi + ldb, bi + 2 * <Py_ssize_t>ldb,
                         bi + 3 * <Py_ssize_t>ldb,
                         alpha * ar[0], alpha * ar[1], alpha * ar[2], alpha * ar[3])
        i += 4
    for i in range(i, k):
        for r in range(m):
            add_row(c + <Py_ssize_t>r * ldc, n, b + <Py_ssize_t>i * ldb,
                    alpha * a[<Py_ssize_t>r * lda + i])


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
    cdef int start = 0, i, count
    cdef const int* z
    while start < k:
        count = 0
        for i in range(start, min(start + ROWS_PER_PASS, k)):
            nonzero[count] = i      # kept only if a[i] != 0: no branch to mispredict
            count += a[i] != 0
        i = 0
        while i + 4 <= count:
            z = nonzero + i
            add_rows(c, n, b + <Py_ssize_t>z[0] * ldb, b + <Py_ssize_t>z[1] * ldb,
                     b + <Py_ssize_t>z[2] * ldb, b + <Py_ssize_t>z[3] * ldb,
                     alpha * a[z[0]], alpha * a[z[1]], alpha * a[z[2]], alpha * a[z[3]])
            i += 4
        for i in range(i, count):
            add_row(c, n, b + <Py_ssize_t>nonzero[i] * ldb, alpha * a[nonzero[i]])
        start += ROWS_PER_PASS


# --- the row updates both products are made of ------------------------------------------------

cdef inline void scale_row(floating* c, int n, floating beta) noexcept nogil:
    """c (1×n) := beta * c; beta 0 overwrites c, which may be garbage (NaN must not survive)"""
    cdef int j
    if beta == 0:
        memset(c, 0, n * sizeof(floating))
    elif beta != 1:
        for j in range(n):
            c[j] *= beta


cdef inline void add_rows(floating* c, int n, const floating* r0, const floating* r1,
                          const floating* r2, const floating* r3, floating x0, floating x1,
                          floating x2, floating x3) noexcept nogil:
    """c (1×n) += x0·r0 + x1·r1 + x2·r2 + x3·r3: one pass over c serves four rows"""
    cdef int j
    for j in range(n):
        c[j] += x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j]


cdef inline void add_row(floating* c, int n, const floating* r, floating x) noexcept nogil:
    """c (1×n) += x·r"""
    cdef int j
    for j in range(n):
        c[j] += x * r[j]
