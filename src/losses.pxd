# Losses fused with the output delta: one pass computes the loss and dL/dlogits.
#
# logits and delta are (rows, k) and may be the same buffer. Targets are either integer class
# labels (rows,) or dense targets (rows, k) — one of the two pointers is NULL. weights (rows,) are
# per-row sample weights, or NULL for all ones. Each kernel returns scale · Σ_rows w·ℓ_row and
# writes delta = scale · w · dℓ/dlogits, so with scale = 1/Σw (softmax) or 1/(k·Σw) (element-wise
# losses) the loss is the weighted mean, and summing over chunks of rows gives the full-batch mean.

from cython cimport floating
from mathf cimport fexp, flog, flog1p, sigmoid

cdef enum Loss:
    SOFTMAX_CROSS_ENTROPY = 0
    SIGMOID_CROSS_ENTROPY = 1
    MEAN_SQUARED_ERROR = 2
    POISSON = 3


cdef inline double softmax_cross_entropy(const floating* logits, const int* labels,
                                         const floating* targets, const floating* weights,
                                         floating scale, floating* delta,
                                         Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    """ℓ = logsumexp(z) − Σ_j t_j z_j; delta = scale·w·(softmax(z)·Σt − t)"""
    cdef Py_ssize_t i, j
    cdef floating m, s, lse, t, t_sum, w
    cdef const floating* z
    cdef double total = 0, row_loss
    for i in range(rows):
        z = logits + i * k
        m = z[0]
        for j in range(1, k):
            if z[j] > m:
                m = z[j]
        s = 0
        for j in range(k):
            s += fexp(z[j] - m)
        lse = m + flog(s)
        w = weights[i] if weights != NULL else 1
        if labels != NULL:     # (m − z_y) + log s: exact when the loss is small
            row_loss = (m - z[labels[i]]) + flog(s)
            t_sum = 1
        else:
            row_loss = 0
            t_sum = 0
            for j in range(k):
                t = targets[i * k + j]
                row_loss += t * (lse - z[j])
                t_sum += t
        total += w * row_loss
        # z is read above before delta (which may alias it) is written below
        for j in range(k):
            t = (1 if labels[i] == j else 0) if labels != NULL else targets[i * k + j]
            delta[i * k + j] = scale * w * (fexp(z[j] - lse) * t_sum - t)
    return scale * total


cdef inline double element_loss(int loss, floating y, floating t, floating* grad) noexcept nogil:
    """ℓ(y, t) of one output and target, and grad := dℓ/dy, for the losses taken output by
    output:
    sigmoid cross-entropy  ℓ = max(y,0) − y·t + log(1 + e^−|y|)    dℓ/dy = σ(y) − t
    Poisson                ℓ = t·(log t − y) − t + eʸ              dℓ/dy = eʸ − t
        (half the Poisson deviance of the mean μ = eʸ: 0 when μ = t; t·log t is 0 at t = 0)
    squared error          ℓ = (y − t)²                            dℓ/dy = 2(y − t)"""
    cdef floating mu, r
    if loss == SIGMOID_CROSS_ENTROPY:
        grad[0] = sigmoid(y) - t
        return (y if y > 0 else 0) - y * t + flog1p(fexp(-y if y > 0 else y))
    if loss == POISSON:
        mu = fexp(y)
        grad[0] = mu - t
        return (t * (flog(t) - y) - t if t > 0 else 0) + mu
    r = y - t
    grad[0] = 2 * r
    return r * r


cdef inline double elementwise_loss(int loss, const floating* outputs, const floating* targets,
                                    const floating* weights, floating scale, floating* delta,
                                    Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    """Σ_rows w·Σ_j ℓ(y_j, t_j) · scale; delta = scale·w·dℓ/dy (ℓ: element_loss)"""
    cdef Py_ssize_t i, j
    cdef floating w, g
    cdef double total = 0, row_loss
    for i in range(rows):
        w = weights[i] if weights != NULL else 1
        row_loss = 0
        for j in range(k):
            row_loss += element_loss(loss, outputs[i * k + j], targets[i * k + j], &g)
            delta[i * k + j] = scale * w * g
        total += w * row_loss
    return scale * total


cdef inline double loss_forward_backward(int loss, const floating* outputs, const int* labels,
                                         const floating* targets, const floating* weights,
                                         floating scale, floating* delta,
                                         Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    if loss == SOFTMAX_CROSS_ENTROPY:
        return softmax_cross_entropy(outputs, labels, targets, weights, scale, delta, rows, k)
    return elementwise_loss(loss, outputs, targets, weights, scale, delta, rows, k)


# logits and probs are (rows, k), and may be the same buffer.
cdef inline void softmax(const floating* logits, floating* probs,
                         Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    """probs := exp(z − max z) / Σ exp(z − max z), row by row"""
    cdef Py_ssize_t i, j
    cdef floating m, s
    for i in range(rows):
        m = logits[i * k]
        for j in range(1, k):
            if logits[i * k + j] > m:
                m = logits[i * k + j]
        s = 0
        for j in range(k):
            probs[i * k + j] = fexp(logits[i * k + j] - m)
            s += probs[i * k + j]
        for j in range(k):
            probs[i * k + j] /= s


cdef inline double count_correct(int loss, const floating* outputs, const int* labels,
                                 const floating* targets, const floating* weights,
                                 Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    """Σ w over correct predictions: argmax = label (softmax), or, per output, (z > 0) = (t > ½)
    divided by k (sigmoid); 0 for regression"""
    cdef Py_ssize_t i, j, best
    cdef double total = 0, hits
    if loss == MEAN_SQUARED_ERROR or loss == POISSON:
        return 0
    for i in range(rows):
        if loss == SOFTMAX_CROSS_ENTROPY:
            best = 0
            for j in range(1, k):
                if outputs[i * k + j] > outputs[i * k + best]:
                    best = j
            if labels != NULL:
                hits = 1 if best == labels[i] else 0
            else:   # dense targets: correct when the top output is a top target
                hits = 1
                for j in range(k):
                    if targets[i * k + j] > targets[i * k + best]:
                        hits = 0
        else:
            hits = 0
            for j in range(k):
                hits += 1 if (outputs[i * k + j] > 0) == (targets[i * k + j] > 0.5) else 0
            hits /= k
        total += hits * (weights[i] if weights != NULL else 1)
    return total
