# Scalar math in the precision of the fused type: the float branch calls expf/logf/…,
# never the double routines (which would be slower and round differently).

from cython cimport floating
from libc.math cimport exp, expf, log, logf, log1p, log1pf, tanh, tanhf, erf, erff, sqrt, sqrtf


cdef inline floating fexp(floating x) noexcept nogil:
    return expf(x) if floating is float else exp(x)

cdef inline floating flog(floating x) noexcept nogil:
    return logf(x) if floating is float else log(x)

cdef inline floating flog1p(floating x) noexcept nogil:
    return log1pf(x) if floating is float else log1p(x)

cdef inline floating ftanh(floating x) noexcept nogil:
    return tanhf(x) if floating is float else tanh(x)

cdef inline floating ferf(floating x) noexcept nogil:
    return erff(x) if floating is float else erf(x)

cdef inline floating fsqrt(floating x) noexcept nogil:
    return sqrtf(x) if floating is float else sqrt(x)

cdef inline floating sigmoid(floating x) noexcept nogil:
    """1 / (1 + e^-x), without overflow for large |x|."""
    cdef floating e
    if x >= 0:
        return 1 / (1 + fexp(-x))
    e = fexp(x)
    return e / (1 + e)
