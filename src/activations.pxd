# Activation functions, forward and backward, fused with the work around the GEMM.
#
# The backward pass needs f'(z). For every activation here but GELU it can be had from the
# output a = f(z) alone, so only GELU layers keep their pre-activation z.

from cython cimport floating
from libc.stdint cimport uint16_t
from mathf cimport fexp, ftanh, ferf, sigmoid
from matmul cimport to_bf16

cdef enum Activation:
    IDENTITY = 0
    RELU = 1
    LEAKY_RELU = 2
    SIGMOID = 3
    TANH = 4
    GELU = 5

cdef enum Direction:       # of a pass over the layer's values
    FORWARD = 0
    BACKWARD = 1



cdef inline bint keeps_preactivation(int kind) noexcept nogil:
    return kind == GELU


cdef inline floating activate(floating z, int kind, floating slope) noexcept nogil:
    """a = f(z)"""
    if kind == RELU:
        return z if z > 0 else 0
    if kind == LEAKY_RELU:
        return z if z > 0 else slope * z
    if kind == SIGMOID:
        return sigmoid(z)
    if kind == TANH:
        return ftanh(z)
    if kind == GELU:        # exact GELU, z·Φ(z), as PyTorch's default; 0.707… = 1/√2
        return <floating>0.5 * z * (1 + ferf(z * <floating>0.7071067811865476))
    return z


cdef inline floating derivative(floating a, floating z, int kind, floating slope) noexcept nogil:
    """f'(z), from the output a (and, for GELU, the pre-activation z)"""
    if kind == RELU:
        return 1 if a > 0 else 0
    if kind == LEAKY_RELU:
        return 1 if a > 0 else slope
    if kind == SIGMOID:
        return a * (1 - a)
    if kind == TANH:
        return 1 - a * a
    if kind == GELU:        # Φ(z) + z·φ(z); 0.398… = 1/√(2π)
        return (<floating>0.5 * (1 + ferf(z * <floating>0.7071067811865476))
                + z * <floating>0.3989422804014327 * fexp(<floating>-0.5 * z * z))
    return 1


# z, a are (rows, cols) with rows ld apart; bias is (cols,). z may equal a (in-place) when the
# layer keeps no z.
# h, when given, receives bf16(a), each row while it is in cache (the next layer's bf16 input).
cdef inline void bias_activation_forward(floating* z, floating* a, const floating* bias,
                                         Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                                         int kind, floating slope,
                                         uint16_t* h=NULL) noexcept nogil:
    """z := z + bias (kept only for GELU); a := f(z + bias) — one pass after the GEMM"""
    elementwise(FORWARD, z, a, NULL, bias, rows, cols, ld, kind, slope, h)


# d (upstream gradient dL/da, becomes dL/dz), a, z are (rows, cols) with rows ld apart.
# h, when given, receives bf16(d), each row while it is in cache (the bf16 products' dL/dz).
cdef inline void activation_backward(floating* d, const floating* a, const floating* z,
                                     Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                                     int kind, floating slope, uint16_t* h=NULL) noexcept nogil:
    """d := d · f'(z)"""
    elementwise(BACKWARD, <floating*>z, <floating*>a, d, NULL, rows, cols, ld, kind, slope, h)


cdef inline void elementwise(int direction, floating* z, floating* a, floating* d,
                             const floating* bias, Py_ssize_t rows, Py_ssize_t cols,
                             Py_ssize_t ld, int kind, floating slope,
                             uint16_t* h) noexcept nogil:
    """The one dispatch on the activation: kind is passed on as a constant, so the compiler
    specialises each pass's loop for each activation (vectorising the cheap ones) instead of
    branching on kind for every element"""
    if kind == RELU:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, RELU, slope, h)
    elif kind == LEAKY_RELU:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, LEAKY_RELU, slope, h)
    elif kind == SIGMOID:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, SIGMOID, slope, h)
    elif kind == TANH:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, TANH, slope, h)
    elif kind == GELU:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, GELU, slope, h)
    else:
        _elementwise(direction, z, a, d, bias, rows, cols, ld, IDENTITY, slope, h)


cdef inline void _elementwise(int direction, floating* z, floating* a, floating* d,
                              const floating* bias, Py_ssize_t rows, Py_ssize_t cols,
                              Py_ssize_t ld, int kind, floating slope,
                              uint16_t* h) noexcept nogil:
    """FORWARD: z += bias (kept only for GELU), a := f(z); BACKWARD: d := d · f'(z); with h,
    h := bf16 of what the pass wrote"""
    cdef Py_ssize_t i, j
    cdef floating v
    cdef floating* zr
    cdef floating* ar
    cdef floating* dr
    cdef bint keep = keeps_preactivation(kind)
    if direction == FORWARD:
        for i in range(rows):
            zr = z + i * ld
            ar = a + i * ld
            for j in range(cols):
                v = zr[j] + bias[j]
                if keep:
                    zr[j] = v
                ar[j] = activate(v, kind, slope)
            to_bf16(h + i * ld if h != NULL else NULL, ar, 1, cols, ld, ld)
    else:
        for i in range(rows):
            dr = d + i * ld
            ar = a + i * ld
            zr = z + i * ld
            for j in range(cols):
                dr[j] = dr[j] * derivative(ar[j], zr[j], kind, slope)
            to_bf16(h + i * ld if h != NULL else NULL, dr, 1, cols, ld, ld)


# d is dL/dz (rows, cols); dbias is (cols,). Threads that share a batch each take a range of
# the columns, over every row.
cdef inline void bias_gradient(floating* dbias, const floating* d, Py_ssize_t rows,
                               Py_ssize_t cols, Py_ssize_t first, Py_ssize_t last,
                               bint accumulate) noexcept nogil:
    """dbias[first:last] (+)= column sums of d[:, first:last]"""
    cdef Py_ssize_t i, j
    cdef const floating* row
    if not accumulate:
        for j in range(first, last):
            dbias[j] = 0
    for i in range(rows):
        row = d + i * cols
        for j in range(first, last):
            dbias[j] += row[j]
