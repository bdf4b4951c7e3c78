"""Thin memoryview wrappers around each kernel, for the tests only: each compares a kernel with
its plain numpy reference (cdnn/kinds.py, tests/reference.py). Production code calls the
kernels through the engine (_network.pyx), never through this module."""

import numpy as np
from cython cimport floating
from libc.stdint cimport intptr_t, uint16_t, uint64_t

from blas cimport gemm
from activations cimport bias_activation_forward, activation_backward, bias_gradient
from dense cimport (dense_forward, dense_backward_delta, dense_backward_params,
                   dense_backward_input)
from dropout cimport dropout_forward, dropout_backward
from losses cimport loss_forward_backward
from matmul cimport (Matmul, bf16_gemm_fn, get_threads_fn, set_threads_fn, product, to_bf16,
                     cdnn_float_of_bf16)

from cdnn.kinds import ACTIVATIONS, LOSSES


cdef _require(bint ok, str what):
    if not ok:
        raise ValueError(what)


def matmul(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
           bint trans_a=False, bint trans_b=False, floating alpha=1, floating beta=0):
    """C := alpha · op(A) @ op(B) + beta · C"""
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    _require((b.shape[1] if trans_b else b.shape[0]) == k and c.shape[0] == m and c.shape[1] == n,
             "shapes do not agree")
    with nogil:
        gemm(trans_a, trans_b, m, n, k, alpha, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
             beta, &c[0, 0], n)


def bf16_round(const float[::1] a):
    """a rounded to bfloat16 (nearest even), as the bits (uint16) and as float32"""
    import numpy as np
    bits = np.empty(a.shape[0], dtype=np.uint16)
    values = np.empty(a.shape[0], dtype=np.float32)
    cdef uint16_t[::1] h = bits
    cdef float[::1] v = values
    cdef Py_ssize_t i
    with nogil:
        to_bf16(&h[0], &a[0], 1, a.shape[0], 0, 0)
        for i in range(a.shape[0]):
            v[i] = cdnn_float_of_bf16(h[i])
    return bits, values


def matmul_bf16(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c,
                bint trans_a, bint trans_b, tuple addresses, float beta=0):
    """C := bf16(op(A)) @ bf16(op(B)) + beta · C in float32, through the product of matmul.pxd
    with the function addresses (gemm_bf16bf16f32, omp_get_max_threads, omp_set_num_threads)"""
    cdef int m = a.shape[1] if trans_a else a.shape[0]
    cdef int k = a.shape[0] if trans_a else a.shape[1]
    cdef int n = b.shape[0] if trans_b else b.shape[1]
    _require((b.shape[1] if trans_b else b.shape[0]) == k and c.shape[0] == m and c.shape[1] == n,
             "shapes do not agree")
    cdef Matmul mm
    cdef intptr_t f, g, s
    f, _, _, _, g, s = addresses
    mm.bf16, mm.get_threads, mm.set_threads = <bf16_gemm_fn>f, <get_threads_fn>g, <set_threads_fn>s
    mm.sgemm = NULL
    ah, _ = bf16_round(np.ravel(a))
    bh, _ = bf16_round(np.ravel(b))
    cdef const uint16_t[::1] ha = ah, hb = bh
    with nogil:
        product(&mm, trans_a, trans_b, m, n, k, &a[0, 0], &ha[0], a.shape[1], &b[0, 0], &hb[0],
                b.shape[1], beta, &c[0, 0], n)


def bias_activation(floating[:, ::1] z, floating[:, ::1] a, const floating[::1] bias,
                    str activation, floating slope=0.01):
    """z := z + bias (GELU only); a := f(z + bias)"""
    _require(a.shape[0] == z.shape[0] and a.shape[1] == z.shape[1] == bias.shape[0], "shapes")
    cdef int kind = ACTIVATIONS[activation].kernel
    with nogil:
        bias_activation_forward(&z[0, 0], &a[0, 0], &bias[0], z.shape[0], z.shape[1],
                                z.shape[1], kind, slope)


def activation_grad(floating[:, ::1] d, const floating[:, ::1] a, const floating[:, ::1] z,
                    str activation, floating slope=0.01):
    """d := d · f'(z)"""
    _require(a.shape[0] == z.shape[0] == d.shape[0] and a.shape[1] == z.shape[1] == d.shape[1],
             "shapes")
    cdef int kind = ACTIVATIONS[activation].kernel
    with nogil:
        activation_backward(&d[0, 0], &a[0, 0], &z[0, 0], d.shape[0], d.shape[1], d.shape[1],
                            kind, slope)


def bias_grad(floating[::1] dbias, const floating[:, ::1] d, Py_ssize_t first=0,
              Py_ssize_t last=-1, bint accumulate=False):
    """dbias[first:last] (+)= column sums of d[:, first:last] (last=-1: to the end)"""
    if last == -1:
        last = d.shape[1]
    _require(dbias.shape[0] == d.shape[1] and 0 <= first <= last <= d.shape[1], "shapes")
    with nogil:
        bias_gradient(&dbias[0], &d[0, 0], d.shape[0], d.shape[1], first, last, accumulate)


def dense(floating[:, ::1] z, floating[:, ::1] a, const floating[:, ::1] inp,
          const floating[:, ::1] W, const floating[::1] b, str activation, floating slope=0.01,
          tuple columns=None):
    """z := inp @ W + b; a := f(z); only the columns (first, last) of z and a, when given"""
    cdef int first, last
    first, last = columns if columns is not None else (0, W.shape[1])
    _require(inp.shape[1] == W.shape[0] and W.shape[1] == b.shape[0] == z.shape[1] == a.shape[1]
             and z.shape[0] == a.shape[0] == inp.shape[0] and 0 <= first <= last <= W.shape[1],
             "shapes")
    cdef int kind = ACTIVATIONS[activation].kernel
    with nogil:
        dense_forward(&z[0, 0], &a[0, 0], &inp[0, 0], &W[0, 0], &b[0], inp.shape[0],
                      W.shape[0], W.shape[1], first, last, kind, slope)


def dense_grad(floating[:, ::1] dW, floating[::1] db, floating[:, ::1] d,
               const floating[:, ::1] inp, const floating[:, ::1] W, const floating[:, ::1] a,
               const floating[:, ::1] z, str activation, floating[:, ::1] dinp=None,
               floating slope=0.01, bint accumulate=False, tuple w_range=None,
               tuple b_range=None):
    """dz := d·f'(z) (into d); db (+)= Σ dz; dW (+)= inpᵀ @ dz; dinp := dz @ Wᵀ (if given);
    only the rows w_range = (first, last) of dW and the same columns of dinp, and the entries
    b_range of db, when given.
    (dinp comes last, unlike in the kernel, so that the dtype is read from an array, not None.)"""
    cdef int rows = inp.shape[0], n_in = W.shape[0], n_out = W.shape[1]
    cdef int w_first, w_last, b_first, b_last
    w_first, w_last = w_range if w_range is not None else (0, n_in)
    b_first, b_last = b_range if b_range is not None else (0, n_out)
    _require(inp.shape[1] == n_in and dW.shape[0] == n_in and dW.shape[1] == n_out
             and db.shape[0] == n_out and d.shape[0] == a.shape[0] == z.shape[0] == rows
             and d.shape[1] == a.shape[1] == z.shape[1] == n_out
             and 0 <= w_first <= w_last <= n_in and 0 <= b_first <= b_last <= n_out
             and (dinp is None or (dinp.shape[0] == rows and dinp.shape[1] == n_in)), "shapes")
    cdef int kind = ACTIVATIONS[activation].kernel
    cdef floating* dinp_ptr = &dinp[0, 0] if dinp is not None else NULL
    with nogil:
        dense_backward_delta(&d[0, 0], &a[0, 0], &z[0, 0], rows, n_out, 0, n_out, kind, slope)
        dense_backward_params(&dW[0, 0], &db[0], &d[0, 0], &inp[0, 0], rows, n_in, n_out,
                              w_first, w_last, b_first, b_last, accumulate)
        if dinp_ptr != NULL:
            dense_backward_input(dinp_ptr, &d[0, 0], &W[0, 0], rows, n_in, n_out, w_first,
                                 w_last)


def loss(str name, const floating[:, ::1] outputs, const int[::1] labels,
         const floating[:, ::1] targets, const floating[::1] weights, floating scale,
         floating[:, ::1] delta):
    """Returns scale · Σ w·ℓ; delta := scale · w · dℓ/doutputs"""
    cdef Py_ssize_t rows = outputs.shape[0], k = outputs.shape[1], i
    _require(delta.shape[0] == rows and delta.shape[1] == k
             and (labels is None or labels.shape[0] == rows)
             and (targets is None or (targets.shape[0] == rows and targets.shape[1] == k))
             and (weights is None or weights.shape[0] == rows)
             and (labels is None) != (targets is None), "shapes")
    if labels is not None:
        _require(name == "softmax_cross_entropy", "labels need the softmax loss")
        for i in range(rows):
            _require(0 <= labels[i] < k, "label out of range")
    cdef int kind = LOSSES[name].kernel
    cdef double result
    with nogil:
        result = loss_forward_backward(
            kind, &outputs[0, 0], &labels[0] if labels is not None else NULL,
            &targets[0, 0] if targets is not None else NULL,
            &weights[0] if weights is not None else NULL, scale, &delta[0, 0], rows, k)
    return result


def dropout(floating[:, ::1] out, const floating[:, ::1] a, double rate, uint64_t seed,
            uint64_t step, tuple columns=None):
    """out := a · keep / (1 − rate); only the columns (first, last) of out, when given"""
    cdef Py_ssize_t first, last
    first, last = columns if columns is not None else (0, a.shape[1])
    _require(out.shape[0] == a.shape[0] and out.shape[1] == a.shape[1]
             and 0 <= first <= last <= a.shape[1], "shapes")
    with nogil:
        dropout_forward(&out[0, 0], &a[0, 0], a.shape[0], a.shape[1], first, last, 0, rate,
                        seed, step)


def dropout_grad(floating[:, ::1] d, double rate, uint64_t seed, uint64_t step):
    """d := d · keep / (1 − rate), the forward pass's mask"""
    with nogil:
        dropout_backward(&d[0, 0], d.shape[0], d.shape[1], 0, d.shape[1], 0, rate, seed, step)
