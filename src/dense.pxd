# A dense layer, a = f(inp @ W + b): its forward and backward pass.
# inp is (rows, n_in), W is (n_in, n_out), b is (n_out,), z and a are (rows, n_out).
#
# The backward pass has three parts, so that threads sharing a batch can split it: each thread
# turns its part of d into dL/dz (dense_backward_delta: its rows, or its columns of every row);
# the rest needs every row's and unit's dL/dz, so each thread then computes its own rows of dW
# and entries of db (dense_backward_params), and the matching columns of the input's gradient
# (dense_backward_input), which are the part of d the layer below starts from. One thread
# alone takes every row and the whole ranges.
#
# At bf16 (mm, matmul.pxd) each product reads the bf16 copies of its operands, named with an
# _h suffix and laid out as the float ones; a pass that produces a product's operand also
# writes its bf16 copy (a_h, d_h). Without mm every _h pointer is NULL and unused.

from cython cimport floating
from libc.stdint cimport uint16_t
from matmul cimport Matmul, product
from activations cimport bias_activation_forward, activation_backward, bias_gradient


cdef inline uint16_t* _at(const uint16_t* h, Py_ssize_t offset) noexcept nogil:
    """h + offset, or NULL without bf16 copies"""
    return <uint16_t*>h + offset if h != NULL else NULL


# Threads that share rows (a single prediction) each take a range of the columns (units).
cdef inline void dense_forward(floating* z, floating* a, const floating* inp,
                               const floating* W, const floating* b,
                               int rows, int n_in, int n_out, int first, int last,
                               int kind, floating slope, const Matmul* mm=NULL,
                               const uint16_t* inp_h=NULL, const uint16_t* W_h=NULL,
                               uint16_t* a_h=NULL) noexcept nogil:
    """z[:, first:last] := inp @ W[:, first:last] + b[first:last]; a[:, first:last] := f(z)"""
    if last > first:
        product(mm, False, False, rows, last - first, n_in, inp, inp_h, n_in, W + first,
                _at(W_h, first), n_out, 0, z + first, n_out)
        bias_activation_forward(z + first, a + first, b + first, rows, last - first, n_out,
                                kind, slope, _at(a_h, first))


# d is dL/da on entry and dL/dz on exit (rows, n_out), in the columns first:last
cdef inline void dense_backward_delta(floating* d, const floating* a, const floating* z,
                                      int rows, int n_out, int first, int last, int kind,
                                      floating slope, uint16_t* d_h=NULL) noexcept nogil:
    """d[:, first:last] := d·f'(z)"""
    activation_backward(d + first, a + first, z + first, rows, last - first, n_out, kind,
                        slope, _at(d_h, first))


# d is dL/dz (rows, n_out); dW (n_in, n_out) and db (n_out,) are written in the rows
# w_first:w_last of dW and the entries b_first:b_last of db, or added to when accumulate is set
# (gradients summed over chunks of rows)
cdef inline void dense_backward_params(floating* dW, floating* db, const floating* d,
                                       const floating* inp, int rows, int n_in, int n_out,
                                       int w_first, int w_last, int b_first, int b_last,
                                       bint accumulate, const Matmul* mm=NULL,
                                       const uint16_t* inp_h=NULL,
                                       const uint16_t* d_h=NULL) noexcept nogil:
    """dW[w_first:w_last] (+)= inp[:, w_first:w_last]ᵀ @ d; db[b_first:b_last] (+)= Σ_rows d"""
    if w_last > w_first:
        product(mm, True, False, w_last - w_first, n_out, rows, inp + w_first,
                _at(inp_h, w_first), n_in, d, d_h, n_out, 1 if accumulate else 0,
                dW + <Py_ssize_t>w_first * n_out, n_out)
    bias_gradient(db, d, rows, n_out, b_first, b_last, accumulate)


# d is dL/dz (rows, n_out); dinp is (rows, n_in), written in the columns first:last
cdef inline void dense_backward_input(floating* dinp, const floating* d, const floating* W,
                                      int rows, int n_in, int n_out, int first,
                                      int last, const Matmul* mm=NULL,
                                      const uint16_t* d_h=NULL,
                                      const uint16_t* W_h=NULL) noexcept nogil:
    """dinp[:, first:last] := d @ W[first:last]ᵀ"""
    if rows > 0 and last > first:
        product(mm, False, True, rows, last - first, n_out, d, d_h, n_out,
                W + <Py_ssize_t>first * n_out, _at(W_h, <Py_ssize_t>first * n_out), n_out, 0,
                dinp + first, n_in)
