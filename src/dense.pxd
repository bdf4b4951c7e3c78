# A dense layer, a = f(inp @ W + b): its forward and backward pass.
# inp is (rows, n_in), W is (n_in, n_out), b is (n_out,), z and a are (rows, n_out).
#
# The backward pass has three parts, so that threads sharing a batch can split it: each thread
# turns its part of d into dL/dz (dense_backward_delta: its rows, or its columns of every row);
# the rest needs every row's and unit's dL/dz, so each thread then computes its own rows of dW
# and entries of db (dense_backward_params), and the matching columns of the input's gradient
# (dense_backward_input), which are the part of d the layer below starts from. One thread
# alone takes every row and the whole ranges.

from cython cimport floating
from blas cimport gemm
from activations cimport bias_activation_forward, activation_backward, bias_gradient


# Threads that share rows (a single prediction) each take a range of the columns (units).
cdef inline void dense_forward(floating* z, floating* a, const floating* inp,
                               const floating* W, const floating* b,
                               int rows, int n_in, int n_out, int first, int last,
                               int kind, floating slope) noexcept nogil:
    """z[:, first:last] := inp @ W[:, first:last] + b[first:last]; a[:, first:last] := f(z)"""
    if last > first:
        gemm(False, False, rows, last - first, n_in, 1, inp, n_in, W + first, n_out, 0,
             z + first, n_out)
        bias_activation_forward(z + first, a + first, b + first, rows, last - first, n_out,
                                kind, slope)


# d is dL/da on entry and dL/dz on exit (rows, n_out), in the columns first:last
cdef inline void dense_backward_delta(floating* d, const floating* a, const floating* z,
                                      int rows, int n_out, int first, int last, int kind,
                                      floating slope) noexcept nogil:
    """d[:, first:last] := d·f'(z)"""
    activation_backward(d + first, a + first, z + first, rows, last - first, n_out, kind,
                        slope)


# d is dL/dz (rows, n_out); dW (n_in, n_out) and db (n_out,) are written in the rows
# w_first:w_last of dW and the entries b_first:b_last of db, or added to when accumulate is set
# (gradients summed over chunks of rows)
cdef inline void dense_backward_params(floating* dW, floating* db, const floating* d,
                                       const floating* inp, int rows, int n_in, int n_out,
                                       int w_first, int w_last, int b_first, int b_last,
                                       bint accumulate) noexcept nogil:
    """dW[w_first:w_last] (+)= inp[:, w_first:w_last]ᵀ @ d; db[b_first:b_last] (+)= Σ_rows d"""
    if w_last > w_first:
        gemm(True, False, w_last - w_first, n_out, rows, 1, inp + w_first, n_in, d, n_out,
             1 if accumulate else 0, dW + <Py_ssize_t>w_first * n_out, n_out)
    bias_gradient(db, d, rows, n_out, b_first, b_last, accumulate)


# d is dL/dz (rows, n_out); dinp is (rows, n_in), written in the columns first:last
cdef inline void dense_backward_input(floating* dinp, const floating* d, const floating* W,
                                      int rows, int n_in, int n_out, int first,
                                      int last) noexcept nogil:
    """dinp[:, first:last] := d @ W[first:last]ᵀ"""
    if rows > 0 and last > first:
        gemm(False, True, rows, last - first, n_out, 1, d, n_out, W + <Py_ssize_t>first * n_out,
             n_out, 0, dinp + first, n_in)
