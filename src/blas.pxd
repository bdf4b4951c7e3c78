# Row-major matrix products over scipy's BLAS (no BLAS to build or link).
#
# BLAS is column-major. A row-major matrix is the transpose of the same memory read
# column-major, so the row-major C = op(A) @ op(B) is the column-major Cᵀ = op(B)ᵀ @ op(A)ᵀ:
# pass B before A and swap m and n.

from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m×n) := alpha * op(A) @ op(B) + beta * C, all row-major; op(A) is m×k, op(B) k×n."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)
