# A dense layer, a = f(inp @ W + b): its forward and backward pass.
# inp is (rows, n_in), W is (n_in, n_out), b is (n_out,), z and a are (rows, n_out).

from cython cimport floating
from blas cimport gemm
from activations cimport bias_activation_forward, activation_backward


cdef inline void dense_forward(floating* z, floating* a, const floating* inp,
                               const floating* W, const floating* b,
                               int rows, int n_in, int n_out,
                               int kind, floating slope) noexcept nogil:
    """z := inp @ W + b; a := f(z)"""
    gemm(False, False, rows, n_out, n_in, 1, inp, n_in, W, n_out, 0, z, n_out)
    bias_activation_forward(z, a, b, rows, n_out, kind, slope)


# d is dL/da on entry and dL/dz on exit (rows, n_out); dinp is (rows, n_in), or NULL when the
# input gradient is not wanted (the first layer); dW (n_in, n_out) and db (n_out,) are written,
# or added to when accumulate is set (gradients summed over chunks of rows).
cdef inline void dense_backward(floating* dinp, floating* dW, floating* db, floating* d,
                                const floating* inp, const floating* W,
                                const floating* a, const floating* z,
                                int rows, int n_in, int n_out,
                                int kind, floating slope, bint accumulate) noexcept nogil:
    """dz := d·f'(z); db (+)= Σ_rows dz; dW (+)= inpᵀ @ dz; dinp := dz @ Wᵀ"""
    activation_backward(d, db, a, z, rows, n_out, kind, slope, accumulate)
    gemm(True, False, n_in, n_out, rows, 1, inp, n_in, d, n_out,
         1 if accumulate else 0, dW, n_out)
    if dinp != NULL:
        gemm(False, True, rows, n_in, n_out, 1, d, n_out, W, n_out, 0, dinp, n_in)
