# Optimizer updates over the flat parameter buffer, with PyTorch's semantics and order of
# operations (torch.optim.SGD, Adam, AdamW, RMSprop; Adam also in scikit-learn's form). p, g and
# the state buffers share one layout of n elements; g is read, never written. gscale multiplies
# the gradient first (global norm clipping). step counts from 1. Each update returns whether a
# new parameter (or a squared-gradient average) is not finite (x − x ≠ 0 only for inf and NaN;
# an integer OR, so the check vectorises with the pass).

from cython cimport floating
from mathf cimport fsqrt

cdef enum OptimizerKind:       # cdnn/kinds.py's OPTIMIZERS give each optimizer its kind
    SGD = 0
    ADAM = 1
    RMSPROP = 2

cdef struct OptimizerConfig:
    int kind
    double momentum, weight_decay     # SGD, RMSprop (and Adam's coupled decay)
    bint nesterov                     # SGD
    double beta1, beta2, eps          # Adam, AdamW (eps also RMSprop)
    bint eps_inside                   # Adam as scikit-learn's: ε added to √v before v's
                                      # bias correction, not after (PyTorch's)
    bint decoupled                    # AdamW: decay the weights, not the gradient
    double alpha                      # RMSprop

# The buffers an optimizer keeps, by the names cdnn/kinds.py gives them (PyTorch's), each in
# the flat parameter layout, of the parameters' dtype; NULL for one it does not keep.
cdef struct OptimizerState:
    void* m                 # Adam: the running average of g
    void* v                 # Adam: the running average of g²
    void* momentum          # SGD, RMSprop: the momentum buffer
    void* square_avg        # RMSprop: the running average of g²

cdef enum:
    MAX_STATE = 2           # the most buffers one optimizer keeps


cdef inline OptimizerConfig make_config(dict o) except *:
    """The struct for a Python optimizer's kernel_config() dict"""
    cdef OptimizerConfig c
    c.kind = o["kernel"]
    if not SGD <= c.kind <= RMSPROP:
        raise ValueError(f"no optimizer kernel {c.kind}")
    c.momentum = o.get("momentum", 0.0)
    c.weight_decay = o.get("weight_decay", 0.0)
    c.nesterov = o.get("nesterov", False)
    c.beta1, c.beta2 = o.get("betas", (0.9, 0.999))
    c.eps = o.get("eps", 1e-8)
    c.eps_inside = o.get("eps_inside", False)
    c.decoupled = o.get("decoupled", False)
    c.alpha = o.get("alpha", 0.99)
    return c


cdef inline bint holds_state(const OptimizerConfig* c, const OptimizerState* s) noexcept nogil:
    """Whether s holds every buffer the optimizer's update reads"""
    if c.kind == SGD:
        return s.momentum != NULL
    if c.kind == ADAM:
        return s.m != NULL and s.v != NULL
    return s.square_avg != NULL and s.momentum != NULL


cdef inline OptimizerState named_state(const OptimizerConfig* c, dict state,
                                       const floating* like, Py_ssize_t n) except *:
    """The buffers of state (name -> array of n of like's dtype) by name, after checking that
    they are every one the optimizer's update reads"""
    cdef OptimizerState s
    cdef floating[::1] a
    s.m, s.v, s.momentum, s.square_avg = NULL, NULL, NULL, NULL
    if len(state) > MAX_STATE:
        raise ValueError(f"an optimizer keeps at most {MAX_STATE} buffers, not {sorted(state)}")
    for name, array in state.items():
        a = array
        if a.shape[0] != n:
            raise ValueError(f"the optimizer's {name} buffer has {a.shape[0]} elements, the "
                             f"network {n} parameters")
        if name == "m":
            s.m = &a[0]
        elif name == "v":
            s.v = &a[0]
        elif name == "momentum":
            s.momentum = &a[0]
        elif name == "square_avg":
            s.square_avg = &a[0]
        else:
            raise ValueError(f"no optimizer keeps a buffer named {name!r}")
    if not holds_state(c, &s):
        raise ValueError(f"the optimizer's update reads a buffer that {sorted(state)} lacks")
    return s


cdef inline int state_buffers(const OptimizerState* s, void** out) noexcept nogil:
    """The buffers s holds, in one fixed order, into out (room for MAX_STATE); returns how
    many (for code that treats them alike: the lazy update's undo)"""
    cdef void* named[4]
    cdef int i, n = 0
    named[0], named[1], named[2], named[3] = s.m, s.v, s.momentum, s.square_avg
    for i in range(4):
        if named[i] != NULL and n < MAX_STATE:
            out[n] = named[i]
            n += 1
    return n


cdef inline int sgd_update(const OptimizerConfig* c, floating lr, floating* p, const floating* g,
                            floating* buf, Py_ssize_t n, floating gscale) noexcept nogil:
    """g += wd·p; buf = μ·buf + g; g = g + μ·buf (Nesterov) or buf; p −= lr·g"""
    cdef Py_ssize_t i
    cdef floating gi, pi, mu = c.momentum, wd = c.weight_decay
    cdef bint nesterov = c.nesterov
    cdef int bad = 0
    for i in range(n):
        gi = g[i] * gscale + wd * p[i]
        if mu != 0:
            buf[i] = mu * buf[i] + gi
            gi = gi + mu * buf[i] if nesterov else buf[i]
        pi = p[i] - lr * gi
        p[i] = pi
        bad |= pi - pi != 0
    return bad


cdef inline int adam_update(const OptimizerConfig* c, floating lr, long step, floating* p,
                             const floating* g, floating* m, floating* v, Py_ssize_t n,
                             floating gscale) noexcept nogil:
    """m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; p −= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + ε),
    or with eps_inside p −= lr/(1−β1ᵗ) · m / ((√v + ε)/√(1−β2ᵗ)) (scikit-learn's)"""
    cdef Py_ssize_t i
    cdef floating gi, b1 = c.beta1, b2 = c.beta2, wd = c.weight_decay
    cdef floating eps_v = c.eps if c.eps_inside else 0      # added to √v
    cdef floating eps = 0 if c.eps_inside else c.eps        # added after the correction
    cdef floating step_size = lr / (1 - c.beta1 ** step)
    cdef floating bc2_sqrt = fsqrt(<floating>(1 - c.beta2 ** step))
    cdef floating shrink = 1 - lr * wd, pi
    cdef bint decoupled = c.decoupled
    cdef int bad = 0
    for i in range(n):
        gi = g[i] * gscale
        pi = p[i]
        if decoupled:
            pi = pi * shrink
        else:
            gi = gi + wd * pi
        m[i] += (gi - m[i]) * (1 - b1)
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        pi = pi - step_size * (m[i] / ((fsqrt(v[i]) + eps_v) / bc2_sqrt + eps))
        p[i] = pi
        bad |= (pi - pi != 0) | (v[i] - v[i] != 0)    # an overflowed g² would stall p silently
    return bad


cdef inline int rmsprop_update(const OptimizerConfig* c, floating lr, floating* p,
                                const floating* g, floating* sq, floating* buf, Py_ssize_t n,
                                floating gscale) noexcept nogil:
    """g += wd·p; sq = α·sq + (1−α)·g²; buf = μ·buf + g/(√sq + ε); p −= lr·buf"""
    cdef Py_ssize_t i
    cdef floating gi, pi, step, alpha = c.alpha, eps = c.eps, mu = c.momentum
    cdef floating wd = c.weight_decay
    cdef int bad = 0
    for i in range(n):
        gi = g[i] * gscale + wd * p[i]
        sq[i] = alpha * sq[i] + (1 - alpha) * gi * gi
        step = gi / (fsqrt(sq[i]) + eps)
        if mu > 0:
            buf[i] = mu * buf[i] + step
            step = buf[i]
        pi = p[i] - lr * step
        p[i] = pi
        bad |= (pi - pi != 0) | (sq[i] - sq[i] != 0)  # an overflowed g² would stall p silently
    return bad


cdef inline int optimizer_update(const OptimizerConfig* c, floating lr, long step, floating* p,
                                  const floating* g, const OptimizerState* s, Py_ssize_t at,
                                  Py_ssize_t n, floating gscale) noexcept nogil:
    """The update of the n parameters from at of the flat buffers p, g and s's"""
    if c.kind == SGD:
        return sgd_update(c, lr, p + at, g + at, <floating*>s.momentum + at, n, gscale)
    if c.kind == ADAM:
        return adam_update(c, lr, step, p + at, g + at, <floating*>s.m + at,
                           <floating*>s.v + at, n, gscale)
    return rmsprop_update(c, lr, p + at, g + at, <floating*>s.square_avg + at,
                          <floating*>s.momentum + at, n, gscale)


cdef inline double sum_of_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    """Σ x² in double: the squared global gradient norm (non-finite if any x is). Four
    running sums, so the additions need not wait for each other."""
    cdef Py_ssize_t i
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    for i in range(0, n - 3, 4):
        s0 += <double>x[i] * x[i]
        s1 += <double>x[i + 1] * x[i + 1]
        s2 += <double>x[i + 2] * x[i + 2]
        s3 += <double>x[i + 3] * x[i + 3]
    for i in range(n - n % 4, n):
        s0 += <double>x[i] * x[i]
    return (s0 + s1) + (s2 + s3)
