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
    elif floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void row_times_matrix(bint trans_a, bint trans_b, int n, int k, floating alpha,
                                  const floating* a, int lda, const floating* b, int ldb,
                                  floating beta, floating* c) noexcept nogil:
    """c (1×n) := alpha * op(a) @ op(B) + beta * c, as gemv on B read column-major: B (k×n)
    row-major is Bᵀ column-major, so c = Bᵀ·a is gemv 'N' on it (and 'T' for op(B) = Bᵀ)."""
    cdef char t = b'T' if trans_b else b'N'
    cdef int rows = k if trans_b else n, cols = n if trans_b else k
    cdef int inc_a = lda if trans_a else 1, inc_c = 1
    if beta == 0:   # gemv may scale c by 0 rather than overwrite it: NaN garbage would survive
        memset(c, 0, n * sizeof(floating))
    if floating is float:
        sgemv(&t, &rows, &cols, &alpha, <float*>b, &ldb, <float*>a, &inc_a, &beta, c, &inc_c)
    else:
        dgemv(&t, &rows, &cols, &alpha, <double*>b, &ldb, <double*>a, &inc_a, &beta, c, &inc_c)
