# A network's matrix products at their matmul precision: float32/float64 through BLAS
# (blas.pxd), or bfloat16 inputs with float32 accumulation and output through oneDNN's
# gemm_bf16bf16f32 (AMX or AVX512-BF16), whose address cdnn/_onednn.py finds at run time (the
# core wheel neither links nor ships oneDNN).
#
# A bf16 product reads bf16 copies of its operands, made where the float32 values are made:
# the weights after each optimizer update (step.pxd), a layer's output in its bias/activation
# pass and dL/dz in its activation-derivative pass (activations.pxd), the input rows in the
# first layer's forward pass (passes.pxd). Row-major throughout, as oneDNN's gemm API is.
#
# One team of threads: oneDNN's gomp build would start an OpenMP team inside every call, on top
# of cdnn's pool. Each call runs with the calling thread's OpenMP limit at 1 (its own ICV in
# libgomp), so each cdnn thread computes its own part of the product on its own core.

from cython cimport floating
from libc.stdint cimport int64_t, uint16_t, uint32_t
from blas cimport gemm, FEW_ROWS

ctypedef int (*bf16_gemm_fn)(char transa, char transb, int64_t m, int64_t n, int64_t k,
                             float alpha, const uint16_t* a, int64_t lda, const uint16_t* b,
                             int64_t ldb, float beta, float* c, int64_t ldc) noexcept nogil
ctypedef int (*sgemm_fn)(char transa, char transb, int64_t m, int64_t n, int64_t k,
                         float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                         float beta, float* c, int64_t ldc) noexcept nogil
ctypedef int (*get_threads_fn)() noexcept nogil
ctypedef void (*set_threads_fn)(int n) noexcept nogil


cdef struct Matmul:
    bf16_gemm_fn bf16           # NULL: every product in the network's dtype
    sgemm_fn sgemm              # float32 products: oneDNN's sgemm for the shapes where it
    int sgemm_min_n             #   beats OpenBLAS (more than FEW_ROWS rows, n ≥ sgemm_min_n,
    int64_t sgemm_min_nk        #   n·k ≥ sgemm_min_nk: cdnn/_onednn.py); NULL: OpenBLAS
    get_threads_fn get_threads  # the OpenMP runtime oneDNN runs on: omp_get_max_threads,
    set_threads_fn set_threads  #   omp_set_num_threads


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* float32 -> bfloat16, rounded to nearest even; a NaN stays a NaN (quiet) */
    static inline uint16_t cdnn_bf16(float x) {
        uint32_t u;
        memcpy(&u, &x, sizeof u);
        uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
    }
    static inline void cdnn_bf16_row(uint16_t* out, const float* a, Py_ssize_t n) {
        for (Py_ssize_t j = 0; j < n; j++) out[j] = cdnn_bf16(a[j]);
    }
    static inline float cdnn_float_of_bf16(uint16_t h) {
        uint32_t u = (uint32_t)h << 16;
        float x;
        memcpy(&x, &u, sizeof x);
        return x;
    }
    """
    uint16_t cdnn_bf16(float x) noexcept nogil
    void cdnn_bf16_row(uint16_t* out, const float* a, Py_ssize_t n) noexcept nogil
    float cdnn_float_of_bf16(uint16_t h) noexcept nogil


cdef inline bint is_bf16(const Matmul* mm) noexcept nogil:
    return mm != NULL and mm.bf16 != NULL


cdef inline bint onednn_sgemm_for(const Matmul* mm, int m, int n, int k) noexcept nogil:
    """Whether a float32 product of this shape goes to oneDNN's sgemm"""
    return (mm != NULL and mm.sgemm != NULL and m > FEW_ROWS and n >= mm.sgemm_min_n
            and <int64_t>n * k >= mm.sgemm_min_nk)


# a and h are (rows, cols) with rows ld apart (h: ldh apart)
cdef inline void to_bf16(uint16_t* h, const floating* a, Py_ssize_t rows, Py_ssize_t cols,
                         Py_ssize_t ld, Py_ssize_t ldh) noexcept nogil:
    """h := bf16(a); nothing for float64, which has no bf16 path"""
    cdef Py_ssize_t i
    if floating is float and h != NULL:
        for i in range(rows):
            cdnn_bf16_row(h + i * ldh, a + i * ld, cols)


cdef inline void product(const Matmul* mm, bint trans_a, bint trans_b, int m, int n, int k,
                         const floating* a, const uint16_t* ah, int lda,
                         const floating* b, const uint16_t* bh, int ldb,
                         floating beta, floating* c, int ldc) noexcept nogil:
    """C (m×n) := op(A) @ op(B) + beta * C, row-major; op(A) is m×k, op(B) k×n. At bf16 the
    product reads ah and bh, bf16 copies of a and b with their leading dimensions."""
    cdef int threads, status = -1
    cdef char ta = b'T' if trans_a else b'N', tb = b'T' if trans_b else b'N'
    cdef bint bf16 = is_bf16(mm)
    if floating is float:
        if m > 0 and n > 0 and k > 0 and (bf16 or onednn_sgemm_for(mm, m, n, k)):
            threads = mm.get_threads()
            if threads != 1:
                mm.set_threads(1)
            if bf16:
                status = mm.bf16(ta, tb, m, n, k, 1, ah, lda, bh, ldb, beta, c, ldc)
            else:
                status = mm.sgemm(ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
            if threads != 1:        # the caller's thread keeps its own setting
                mm.set_threads(threads)
            if status == 0:
                return
            # oneDNN failed (no memory for its scratch): OpenBLAS's product is still right
    gemm(trans_a, trans_b, m, n, k, 1, a, lda, b, ldb, beta, c, ldc)
