# Activation functions, forward and backward, fused with the work around the GEMM.
#
# The backward pass needs f'(z). For every activation here but GELU it can be had from the
# output a = f(z) alone, so only GELU layers keep their pre-activation z.

from cython cimport floating
from mathf cimport fexp, ftanh, ferf, sigmoid

cdef enum Activation:
    IDENTITY = 0
    RELU = 1
    LEAKY_RELU = 2
    SIGMOID = 3
    TANH = 4
    GELU = 5



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


# z, a are (rows, cols); bias is (cols,). z may equal a (in-place) when the layer keeps no z.
cdef inline void bias_activation_forward(floating* z, floating* a, const floating* bias,
                                         Py_ssize_t rows, Py_ssize_t cols,
                                         int kind, floating slope) noexcept nogil:
    """z := z + bias (kept only for GELU); a := f(z + bias) — one pass after the GEMM"""
    # kind is passed on as a constant, so the compiler specialises the loop for each activation
    # (vectorising the cheap ones) instead of branching on kind for every element
    if kind == RELU:
        _bias_activation(z, a, bias, rows, cols, RELU, slope)
    elif kind == LEAKY_RELU:
        _bias_activation(z, a, bias, rows, cols, LEAKY_RELU, slope)
    elif kind == SIGMOID:
        _bias_activation(z, a, bias, rows, cols, SIGMOID, slope)
    elif kind == TANH:
        _bias_activation(z, a, bias, rows, cols, TANH, slope)
    elif kind == GELU:
        _bias_activation(z, a, bias, rows, cols, GELU, slope)
    else:
        _bias_activation(z, a, bias, rows, cols, IDENTITY, slope)


cdef inline void _bias_activation(floating* z, floating* a, const floating* bias,
                                  Py_ssize_t rows, Py_ssize_t cols,
                                  int kind, floating slope) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating v
    cdef bint keep = keeps_preactivation(kind)
    for i in range(rows):
        for j in range(cols):
            v = z[i * cols + j] + bias[j]
            if keep:
                z[i * cols + j] = v
            a[i * cols + j] = activate(v, kind, slope)


# d (upstream gradient dL/da, becomes dL/dz), a, z are (rows, cols); dbias is (cols,).
cdef inline void activation_backward(floating* d, floating* dbias,
                                     const floating* a, const floating* z,
                                     Py_ssize_t rows, Py_ssize_t cols,
                                     int kind, floating slope, bint accumulate) noexcept nogil:
    """d := d · f'(z); dbias (+)= column sums of d — one pass over d"""
    cdef Py_ssize_t j
    if not accumulate:
        for j in range(cols):
            dbias[j] = 0
    if kind == RELU:    # kind as a constant, as in bias_activation_forward
        _activation_backward(d, dbias, a, z, rows, cols, RELU, slope)
    elif kind == LEAKY_RELU:
        _activation_backward(d, dbias, a, z, rows, cols, LEAKY_RELU, slope)
    elif kind == SIGMOID:
        _activation_backward(d, dbias, a, z, rows, cols, SIGMOID, slope)
    elif kind == TANH:
        _activation_backward(d, dbias, a, z, rows, cols, TANH, slope)
    elif kind == GELU:
        _activation_backward(d, dbias, a, z, rows, cols, GELU, slope)
    else:
        _activation_backward(d, dbias, a, z, rows, cols, IDENTITY, slope)


cdef inline void _activation_backward(floating* d, floating* dbias,
                                      const floating* a, const floating* z,
                                      Py_ssize_t rows, Py_ssize_t cols,
                                      int kind, floating slope) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef floating* dr
    cdef const floating* ar
    cdef const floating* zr
    for i in range(rows):
        dr = d + i * cols
        ar = a + i * cols
        zr = z + i * cols
        for j in range(cols):
            dr[j] = dr[j] * derivative(ar[j], zr[j], kind, slope)
        for j in range(cols):   # a loop of its own, so both vectorise
            dbias[j] += dr[j]
