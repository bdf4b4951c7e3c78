"""The network engine: forward pass, backward pass and whole training steps of a stack of dense
layers, over one flat parameter buffer and one workspace, each in a single nogil call.

Parameter layout, layer by layer: W_l (n_l × n_{l+1}, row-major), then b_l (n_{l+1},). The
gradient and the optimizer state have the same layout.

Workspace layout, for a capacity of B rows: every buffer is B rows of its own width, so it starts
at B × (the sum of the widths before it). Buffers: the gathered input x (n_0); per layer its
output a, its pre-activation z (GELU only, else z is a), its dropped-out output o (dropout only,
else o is a); two deltas of the widest layer, ping-ponged by the backward pass; the gathered
dense targets (n_L); the gathered sample weights (1).

Threads: a training step is shared by n_threads OpenMP threads over one workspace, with
single-threaded GEMMs and a barrier after each layer. Forward, each thread computes its share
of every layer's units for the whole batch (so it packs only its part of each W); the loss and
the backward pass to dL/dz run on each thread's own rows; each thread then computes its own
rows of dW and entries of db from every row of the batch, and updates those same parameters.
Small GEMMs do not scale across BLAS threads, whole shares of a step do; and no thread keeps a
gradient of its own, so there are no copies to sum: each parameter's gradient is one product
over the whole batch. Predictions share rows, or for a few rows units (forward's share_units).
The caller holds the BLAS at one thread during these calls, so the two pools never compete.

Workspace rows: a buffer of width w holds row r of the batch at r × w from its start; threads
sharing a batch write only their own rows. forward and the chunked passes use row 0 onwards.

The Python layer validates every argument; the checks here only guard memory safety.
"""

import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.math cimport isfinite, sqrt
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from activations cimport (IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU,
                          keeps_preactivation, activate)
from dense cimport (dense_forward, dense_backward_delta, dense_backward_params,
                   dense_backward_input)
from dropout cimport dropout_forward, dropout_backward
from losses cimport (SOFTMAX_CROSS_ENTROPY, SIGMOID_CROSS_ENTROPY, MEAN_SQUARED_ERROR,
                     loss_forward_backward, count_correct, softmax)
from optim cimport OptimizerConfig, make_config, optimizer_update, sum_of_squares

cdef enum:
    MAX_THREADS = 64     # bounds the per-thread partial sums kept on the stack

cdef extern from *:
    # Cython's parallel blocks have no barrier statement, nor the size of the team: OpenMP may
    # grant fewer threads than asked (OMP_THREAD_LIMIT, a region inside another), so every
    # region splits its work by the threads it has. An orphaned barrier binds to the enclosing
    # region. Built without OpenMP, a region is one thread and the barrier does nothing.
    """
    #ifdef _OPENMP
    #include <omp.h>
    #endif
    static void thread_barrier(void) {
    #pragma omp barrier
    }
    static int team_size(void) {
    #ifdef _OPENMP
        return omp_get_num_threads();
    #else
        return 1;
    #endif
    }
    static int cpu_has_avx2(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");   /* and the OS saves its registers */
    #else
        return 0;
    #endif
    }
    """
    void thread_barrier() noexcept nogil
    int team_size() noexcept nogil
    bint cpu_has_avx2() noexcept nogil

ACTIVATIONS = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU,
               "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU}
cnp.import_array()

LOSSES = {"softmax_cross_entropy": SOFTMAX_CROSS_ENTROPY,
          "sigmoid_cross_entropy": SIGMOID_CROSS_ENTROPY,
          "mean_squared_error": MEAN_SQUARED_ERROR}


cdef struct Layout:
    int n_layers, loss
    const int* sizes            # n_layers + 1 widths
    const int* kinds            # activation per layer
    const double* dropout       # dropout rate on each layer's output
    const Py_ssize_t* w_off     # into params
    const Py_ssize_t* b_off
    const Py_ssize_t* a_col     # into the workspace, in widths (× capacity)
    const Py_ssize_t* z_col
    const Py_ssize_t* o_col
    Py_ssize_t d0_col, d1_col, t_col, sw_col, row_width, n_params
    double slope, l2


cdef class Network:
    """The shape of a dense network (widths, activations, loss, dropout) and its kernels."""
    cdef Layout layout
    # the arrays the layout points into
    cdef int[::1] _sizes, _kinds
    cdef double[::1] _rates
    cdef Py_ssize_t[::1] _w_off, _b_off, _a_col, _z_col, _o_col
    cdef readonly Py_ssize_t n_params, row_width

    def __init__(self, sizes, activations, str loss, double slope=0.01, dropout=None,
                 double l2=0.0):
        cdef Py_ssize_t n_layers = len(sizes) - 1
        sizes_ = np.asarray(sizes, dtype=np.intc)
        kinds = np.asarray([ACTIVATIONS[a] for a in activations], dtype=np.intc)
        rates = np.zeros(n_layers) if dropout is None else np.asarray(dropout, dtype=np.float64)
        if n_layers < 1 or kinds.shape[0] != n_layers or rates.shape[0] != n_layers:
            raise ValueError("need one activation and one dropout rate per layer")
        if np.any(sizes_ < 1):
            raise ValueError("layer widths must be positive")
        w_off = np.empty(n_layers, dtype=np.intp)
        b_off = np.empty(n_layers, dtype=np.intp)
        a_col = np.empty(n_layers, dtype=np.intp)
        z_col = np.empty(n_layers, dtype=np.intp)
        o_col = np.empty(n_layers, dtype=np.intp)
        cdef Py_ssize_t p = 0, col = sizes_[0], l, n_out
        for l in range(n_layers):
            n_out = sizes_[l + 1]
            w_off[l] = p
            b_off[l] = p + <Py_ssize_t>sizes_[l] * n_out
            p = b_off[l] + n_out
            a_col[l] = col
            col += n_out
            z_col[l] = a_col[l]
            if keeps_preactivation(kinds[l]):
                z_col[l] = col
                col += n_out
            o_col[l] = a_col[l]
            if rates[l] > 0:
                o_col[l] = col
                col += n_out
        widest = int(sizes_[1:].max())
        self.layout.d0_col = col
        self.layout.d1_col = col + widest
        self.layout.t_col = col + 2 * widest
        self.layout.sw_col = self.layout.t_col + sizes_[n_layers]
        self.layout.row_width = self.layout.sw_col + 1
        self._sizes, self._kinds, self._rates = sizes_, kinds, rates
        self._w_off, self._b_off = w_off, b_off
        self._a_col, self._z_col, self._o_col = a_col, z_col, o_col
        self.layout.n_layers = <int>n_layers
        self.layout.loss = LOSSES[loss]
        self.layout.sizes = &self._sizes[0]
        self.layout.kinds = &self._kinds[0]
        self.layout.dropout = &self._rates[0]
        self.layout.w_off = &self._w_off[0]
        self.layout.b_off = &self._b_off[0]
        self.layout.a_col = &self._a_col[0]
        self.layout.z_col = &self._z_col[0]
        self.layout.o_col = &self._o_col[0]
        self.layout.n_params = p
        self.layout.slope = slope
        self.layout.l2 = l2
        self.n_params = p
        self.row_width = self.layout.row_width

    def forward(self, const floating[::1] params, const floating[:, ::1] X,
                floating[:, ::1] out, floating[::1] workspace, int n_threads=1,
                bint share_units=False):
        """out := the output layer's values (logits) for every row of X; dropout is off. Each
        of n_threads threads takes a contiguous share of the rows, in chunks of its part of the
        workspace; or, with share_units, every row, in chunks of the whole workspace, and a
        share of every layer's units. For a few rows, a share of the rows leaves threads idle,
        while a share of the units splits the weights each thread must read."""
        cdef Layout* L = &self.layout
        if not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(f"n_threads must be in 1..{MAX_THREADS}")
        cdef Py_ssize_t cap = _capacity(L, params.shape[0],
                                        workspace.shape[0] // (1 if share_units else n_threads))
        cdef Py_ssize_t n = X.shape[0], k = L.sizes[L.n_layers]
        if X.shape[1] != L.sizes[0] or out.shape[0] != n or out.shape[1] != k:
            raise ValueError("X or out has the wrong shape")
        with nogil:
            if n_threads == 1:      # no parallel region to open (a one-row predict)
                forward_part(L, &params[0], &X[0, 0], n, &out[0, 0], &workspace[0], cap, 0, 1,
                             share_units)
            else:
                with parallel(num_threads=n_threads):
                    forward_part(L, &params[0], &X[0, 0], n, &out[0, 0], &workspace[0], cap,
                                 threadid(), team_size(), share_units)

    def forward_row(self, cnp.ndarray params, X):
        """The output layer's values (1 × n_L) for X when X is what a single prediction usually
        is: a numpy array of params' dtype holding one C-contiguous, aligned, native-order row
        of n_0 finite values; else None, and forward must take X (converting it, or naming
        what is wrong with it). A small row's arithmetic takes a few µs: forward's typed
        arguments and the Python layer's checks would add about 3 µs, these checks 0.1."""
        cdef Layout* L = &self.layout
        cdef int dtype = cnp.PyArray_TYPE(params)
        cdef bint done = False
        if not (cnp.PyArray_NDIM(params) == 1 and cnp.PyArray_ISCARRAY_RO(params)
                and cnp.PyArray_ISNOTSWAPPED(params)
                and cnp.PyArray_DIM(params, 0) == L.n_params):
            raise ValueError("params must be one C-contiguous array of every parameter")
        if not (type(X) is np.ndarray and cnp.PyArray_TYPE(X) == dtype
                and cnp.PyArray_NDIM(X) == 2 and cnp.PyArray_DIM(X, 0) == 1
                and cnp.PyArray_DIM(X, 1) == L.sizes[0] and cnp.PyArray_ISCARRAY_RO(X)
                and cnp.PyArray_ISNOTSWAPPED(X)):
            return None
        cdef cnp.npy_intp shape[2]
        shape[0], shape[1] = 1, L.sizes[L.n_layers]
        out = cnp.PyArray_EMPTY(2, shape, dtype, 0)
        cdef void* p = cnp.PyArray_DATA(params)
        cdef void* x = cnp.PyArray_DATA(X)
        cdef void* y = cnp.PyArray_DATA(out)
        with nogil:
            if dtype == cnp.NPY_FLOAT32:
                done = forward_one(L, <const float*>p, <const float*>x, <float*>y)
            elif dtype == cnp.NPY_FLOAT64:
                done = forward_one(L, <const double*>p, <const double*>x, <double*>y)
        return out if done else None

    def loss_and_grad(self, const floating[::1] params, const floating[:, ::1] X,
                      const int[::1] labels, const floating[:, ::1] targets,
                      const floating[::1] weights, floating[:, ::1] grads,
                      floating[::1] workspace):
        """grads[0] := dL/dparams of the mean loss over all rows of X (plus the L2 penalty);
        returns the loss. Each of n_threads = len(grads) threads takes a contiguous share of
        the rows, in chunks of its part of the workspace, into its own row of grads; the rows
        are then summed in a fixed order."""
        cdef int n_threads = grads.shape[0], team
        if grads.shape[1] != params.shape[0]:
            raise ValueError("grads has the wrong size")
        cdef double loss = self._over_rows(params, X, labels, targets, weights, workspace,
                                           n_threads, &grads[0, 0], &team)[0]
        with nogil:
            sum_gradients(&grads[0, 0], team, self.layout.n_params)
            loss += l2_penalty(&self.layout, &params[0], &grads[0, 0])
        return loss

    def evaluate(self, const floating[::1] params, const floating[:, ::1] X,
                 const int[::1] labels, const floating[:, ::1] targets,
                 const floating[::1] weights, floating[::1] workspace, int n_threads=1):
        """Returns (the mean loss, Σ w over correct predictions) over all rows of X; dropout is
        off, the L2 penalty is not included. Rows are shared between threads as in forward."""
        return self._over_rows(params, X, labels, targets, weights, workspace, n_threads, NULL,
                               NULL)

    cdef tuple _over_rows(self, const floating[::1] params, const floating[:, ::1] X,
                          const int[::1] labels, const floating[:, ::1] targets,
                          const floating[::1] weights, floating[::1] workspace, int n_threads,
                          floating* grads, int* used):
        """(loss, correct) over all rows of X and, when grads is not NULL, each thread's
        gradient in grads[thread]; used (if not NULL) := the number of threads that ran"""
        cdef Layout* L = &self.layout
        if not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(f"n_threads must be in 1..{MAX_THREADS}")
        cdef Py_ssize_t cap = _capacity(L, params.shape[0], workspace.shape[0] // n_threads)
        cdef Py_ssize_t n = X.shape[0]
        _check_targets(L, n, X, labels, targets, weights)
        cdef Rows data = _rows(X, labels, targets, weights)
        cdef floating scale = _loss_scale(L, <const floating*>data.weights, NULL, n)
        cdef double part_loss[MAX_THREADS]
        cdef double part_correct[MAX_THREADS]
        cdef double loss = 0, correct = 0
        cdef int tid, team, ran[1]
        with nogil:
            with parallel(num_threads=n_threads):
                tid = threadid()
                team = team_of(tid, ran)
                rows_pass(L, &params[0], &data, n * tid // team, n * (tid + 1) // team,
                          &workspace[0] + tid * cap * L.row_width, cap, scale,
                          grads + tid * L.n_params if grads != NULL else NULL,
                          &part_loss[tid], &part_correct[tid])
            for tid in range(ran[0]):       # fixed order: deterministic
                loss += part_loss[tid]
                correct += part_correct[tid]
        if used != NULL:
            used[0] = ran[0]
        return loss, correct

    def train(self, floating[::1] params, floating[::1] grad, floating[::1] state1,
              floating[::1] state2, dict optimizer, long step0, const double[::1] lrs,
              const floating[:, ::1] X, const int[::1] labels, const floating[:, ::1] targets,
              const floating[::1] weights, const Py_ssize_t[::1] order, int batch_size,
              double[::1] losses, double[::1] corrects, floating[::1] workspace,
              int[::1] label_buffer, int n_threads=1, double clip_norm=0, uint64_t seed=0):
        """Run len(lrs) training steps in one nogil call. Step s takes the rows
        order[s·batch_size : (s+1)·batch_size] of X and its targets, runs forward, loss and
        backward, and updates params (and the optimizer state) with learning rate lrs[s] and
        optimizer step number step0 + s + 1. losses[s] receives the step's mean loss, corrects[s]
        the (weighted) count of its correct predictions.

        n_threads threads share every step (see the module's docstring); afterwards grad holds
        the last step's gradient. The workspace and label_buffer hold a whole batch.

        Stops at the first step whose loss or gradient is not finite, before updating, or whose
        update made a parameter non-finite. Returns (steps completed, whether params hold that
        failed update — the caller then restores them from a copy and replays the steps)."""
        cdef Layout* L = &self.layout
        cdef int tid, team, ran[1]
        cdef Py_ssize_t cap = _capacity(L, params.shape[0], workspace.shape[0])
        cdef Py_ssize_t n_steps = lrs.shape[0], n = X.shape[0], s, i, rows, start
        cdef Part mine
        cdef int part
        cdef Py_ssize_t n_params = L.n_params
        for i in range(order.shape[0]):
            if not 0 <= order[i] < n:
                raise ValueError("order holds a row index out of range")
        _check_targets(L, n, X, labels, targets, weights, order)
        if not 1 <= n_threads <= MAX_THREADS:
            raise ValueError(f"n_threads must be in 1..{MAX_THREADS}")
        if (grad.shape[0] != n_params or state1.shape[0] != n_params
                or state2.shape[0] != n_params):
            raise ValueError("grad or optimizer state has the wrong size")
        if batch_size < 1 or batch_size > cap or label_buffer.shape[0] < batch_size:
            raise ValueError("batch_size exceeds the workspace")
        if (losses.shape[0] < n_steps or corrects.shape[0] < n_steps
                or not (n_steps - 1) * <Py_ssize_t>batch_size < order.shape[0]
                <= n_steps * <Py_ssize_t>batch_size):
            raise ValueError("order and lrs disagree on the number of steps")
        cdef OptimizerConfig opt = make_config(optimizer)
        cdef Rows data = _rows(X, labels, targets, weights)
        cdef const floating* w = <const floating*>data.weights
        cdef double part_loss[MAX_THREADS]
        cdef double part_correct[MAX_THREADS]
        cdef double part_norm[MAX_THREADS]
        cdef int part_bad[MAX_THREADS]
        cdef double loss, correct, norm
        cdef int bad
        cdef floating scale, gscale
        cdef Py_ssize_t done = n_steps
        cdef bint dirty = False
        with nogil:
            for s in range(n_steps):
                start = s * batch_size
                rows = min(<Py_ssize_t>batch_size, order.shape[0] - start)
                scale = _loss_scale(L, w, &order[start], rows)
                with parallel(num_threads=n_threads):
                    tid = threadid()
                    team = team_of(tid, ran)
                    batch_rows(L, &params[0], &grad[0], &data, &order[start], rows, tid, team,
                               &workspace[0], cap, &label_buffer[0], scale, seed, step0 + s,
                               &part_loss[tid], &part_correct[tid])
                loss = 0
                correct = 0
                for i in range(ran[0]):         # fixed order: deterministic
                    loss += part_loss[i]
                    correct += part_correct[i]
                losses[s] = loss
                corrects[s] = correct
                if not isfinite(loss):
                    done = s
                    break
                # A non-finite gradient needs no pass of its own: the update it makes is caught.
                # Clipping needs the whole gradient's norm first (any fixed split of the sum);
                # the update has each thread update the parameters whose gradient it computed.
                gscale = 1
                if clip_norm > 0:
                    with parallel(num_threads=n_threads):
                        tid = threadid()
                        mine = share(n_params, tid, team_of(tid, ran))
                        part_norm[tid] = sum_of_squares(&grad[mine.first], mine.count)
                    norm = 0
                    for i in range(ran[0]):
                        norm += part_norm[i]
                    norm = sqrt(norm)
                    if not isfinite(norm):
                        done = s
                        break
                    if norm > clip_norm:
                        gscale = <floating>(clip_norm / (norm + 1e-6))
                with parallel(num_threads=n_threads):
                    tid = threadid()
                    team = team_of(tid, ran)
                    part_bad[tid] = 0
                    for part in range(2 * L.n_layers):
                        mine = own_params(L, part, tid, team)
                        part_bad[tid] = part_bad[tid] | optimizer_update(
                            &opt, <floating>lrs[s], step0 + s + 1, &params[mine.first],
                            &grad[mine.first], &state1[mine.first], &state2[mine.first],
                            mine.count, gscale)
                bad = 0
                for i in range(ran[0]):
                    bad |= part_bad[i]
                if bad:
                    done = s
                    dirty = True
                    break
        return done, dirty


def cpu_supports_avx2():
    """Whether this CPU (and OS) can run the AVX2 build of the kernels"""
    return cpu_has_avx2()


def all_finite(const floating[::1] a):
    """Whether no element of a is NaN or ±inf (the input validation's check: one vectorised
    pass, without numpy's per-call overhead, which dominates for a single row)"""
    cdef bint ok = True
    if a.shape[0] > 0:
        with nogil:
            ok = finite(&a[0], a.shape[0])
    return ok


cdef bint finite(const floating* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= a[i] - a[i] != 0     # NaN for NaN and ±inf alone
    return not bad


def softmax_rows(floating[:, ::1] z):
    """z := softmax(z), row by row, in place"""
    with nogil:
        softmax(&z[0, 0], &z[0, 0], z.shape[0], z.shape[1])


def apply_activation(floating[:, ::1] z, str activation, double slope=0.01):
    """z := f(z), in place"""
    cdef int kind = ACTIVATIONS[activation]
    cdef Py_ssize_t i, n = z.shape[0] * z.shape[1]
    cdef floating* p = &z[0, 0]
    with nogil:
        for i in range(n):
            p[i] = activate(p[i], kind, <floating>slope)


# --- the passes over the layers, shared by forward, loss_and_grad and train -------------------

cdef struct Rows:
    # one dataset; one of labels and targets is NULL, weights may be
    const void* X               # (n, n_0) of the fused type
    const int* labels           # (n,)
    const void* targets         # (n, n_L)
    const void* weights         # (n,)


cdef Rows _rows(const floating[:, ::1] X, const int[::1] labels,
               const floating[:, ::1] targets, const floating[::1] weights):
    cdef Rows data
    data.X = &X[0, 0]
    data.labels = &labels[0] if labels is not None else NULL
    data.targets = &targets[0, 0] if targets is not None else NULL
    data.weights = &weights[0] if weights is not None else NULL
    return data


cdef void forward_part(const Layout* L, const floating* params, const floating* X, Py_ssize_t n,
                       floating* out, floating* workspace, Py_ssize_t cap, int tid, int n_threads,
                       bint share_units) noexcept nogil:
    """Thread tid's part of Network.forward over the n rows of X into out (n × n_L)"""
    cdef Py_ssize_t k = L.sizes[L.n_layers], n0 = L.sizes[0], start, stop, rows, i
    cdef int part = tid if share_units else 0, parts = n_threads if share_units else 1
    cdef Part mine = share(n, tid, n_threads)
    cdef Part units = share(k, part, parts)
    cdef floating* ws = workspace + (0 if share_units else tid * cap * L.row_width)
    cdef const floating* result
    start = 0 if share_units else mine.first
    stop = n if share_units else mine.first + mine.count
    while start < stop:
        rows = min(cap, stop - start)
        result = forward(L, params, X + start * n0, ws, cap, rows, False, 0, 0, 0, part, parts)
        for i in range(rows):   # this thread's units of the output
            memcpy(out + (start + i) * k + units.first, result + i * k + units.first,
                   units.count * sizeof(floating))
        start += rows


cdef bint forward_one(const Layout* L, const floating* params, const floating* x,
                      floating* out) noexcept nogil:
    """out (1 × n_L) := the output layer's values for the row x, on this thread, in a
    workspace of its own (so concurrent predictions need no lock); False, with out untouched,
    when x holds a non-finite value or there is no memory"""
    if not finite(x, L.sizes[0]):
        return False
    cdef floating* ws = <floating*>malloc(L.row_width * sizeof(floating))
    if ws == NULL:
        return False
    memcpy(out, forward(L, params, x, ws, 1, 1, False, 0, 0, 0, 0, 1),
           L.sizes[L.n_layers] * sizeof(floating))
    free(ws)
    return True


cdef void batch_rows(const Layout* L, const floating* params, floating* grad, const Rows* data,
                     const Py_ssize_t* idx, Py_ssize_t rows, int tid, int n_threads,
                     floating* ws, Py_ssize_t cap, int* lab, floating scale, uint64_t seed,
                     uint64_t step, double* loss, double* correct) noexcept nogil:
    """Thread tid's part of a training step shared by n_threads threads (every one of them calls
    this): gather its rows of the batch (the rows idx[:rows] of the data) into the workspace, run
    forward on its share of the units, loss and backward on its rows; grad := its share of the
    batch's gradient (of the mean loss, plus the L2 term); loss and correct := its rows'
    share."""
    cdef Py_ssize_t i, n0 = L.sizes[0], k = L.sizes[L.n_layers]
    cdef Part mine = share(rows, tid, n_threads)
    cdef Py_ssize_t first = mine.first, own = mine.count
    cdef const floating* X = <const floating*>data.X
    cdef const floating* targets = <const floating*>data.targets
    cdef const floating* weights = <const floating*>data.weights
    cdef floating* x = ws
    cdef floating* t = ws + cap * L.t_col
    cdef floating* sw = ws + cap * L.sw_col
    cdef const floating* out
    loss[0] = 0
    correct[0] = 0
    for i in range(first, first + own):
        memcpy(x + i * n0, X + idx[i] * n0, n0 * sizeof(floating))
        if data.labels != NULL:
            lab[i] = data.labels[idx[i]]
        if targets != NULL:
            memcpy(t + i * k, targets + idx[i] * k, k * sizeof(floating))
        if weights != NULL:
            sw[i] = weights[idx[i]]
    if n_threads > 1:
        thread_barrier()    # every row is gathered
    # by units, not rows: each thread packs only its part of every W (S, D: +8 % samples/s)
    out = forward(L, params, x, ws, cap, rows, True, seed, step, 0, tid, n_threads) + first * k
    if own > 0:
        loss[0] = loss_forward_backward(
            L.loss, out, lab + first if data.labels != NULL else NULL,
            t + first * k if targets != NULL else NULL, sw + first if weights != NULL else NULL,
            scale, ws + cap * L.d0_col + first * k, own, k)
        correct[0] = count_correct(
            L.loss, out, lab + first if data.labels != NULL else NULL,
            t + first * k if targets != NULL else NULL, sw + first if weights != NULL else NULL,
            own, k)
    backward(L, params, grad, x, ws, cap, rows, tid, n_threads, False, True, seed, step, loss)


cdef void rows_pass(const Layout* L, const floating* params, const Rows* data,
                    Py_ssize_t first, Py_ssize_t last, floating* ws, Py_ssize_t cap,
                    floating scale, floating* grad, double* loss, double* correct) noexcept nogil:
    """The rows first..last of the data, in chunks of cap rows, without dropout: forward and
    loss (loss and correct := their share); with grad, also backward, summing the chunks'
    gradients into grad (zero when there are no rows)."""
    cdef Py_ssize_t start = first, rows, k = L.sizes[L.n_layers], n0 = L.sizes[0]
    cdef const floating* X = <const floating*>data.X
    cdef const floating* targets = <const floating*>data.targets
    cdef const floating* weights = <const floating*>data.weights
    cdef const int* labels
    cdef const floating* t
    cdef const floating* w
    cdef const floating* out
    loss[0] = 0
    correct[0] = 0
    if grad != NULL and last <= first:
        memset(grad, 0, L.n_params * sizeof(floating))
    while start < last:
        rows = min(cap, last - start)
        labels = data.labels + start if data.labels != NULL else NULL
        t = targets + start * k if targets != NULL else NULL
        w = weights + start if weights != NULL else NULL
        out = forward(L, params, X + start * n0, ws, cap, rows, False, 0, 0, 0, 0, 1)
        loss[0] += loss_forward_backward(L.loss, out, labels, t, w, scale, ws + cap * L.d0_col,
                                         rows, k)
        correct[0] += count_correct(L.loss, out, labels, t, w, rows, k)
        if grad != NULL:
            backward(L, params, grad, X + start * n0, ws, cap, rows, 0, 1, start > first, False,
                     0, 0, NULL)
        start += rows


cdef void sum_gradients(floating* grads, int n_threads, Py_ssize_t n) noexcept nogil:
    """grads[0] := Σ_t grads[t] (rows of n), in a fixed order, in parallel over slices"""
    cdef Py_ssize_t i
    cdef Part mine
    cdef int tid, t
    if n_threads > 1:
        with parallel(num_threads=n_threads):
            tid = threadid()
            mine = share(n, tid, team_size())
            for t in range(1, n_threads):
                for i in range(mine.first, mine.first + mine.count):
                    grads[i] = grads[i] + grads[t * n + i]


cdef struct Part:
    Py_ssize_t first, count


cdef inline int team_of(int tid, int* ran) noexcept nogil:
    """The size of the current parallel region's team, which thread 0 also records in ran (the
    partial results to combine after the region are those of ran[0] threads)"""
    cdef int team = team_size()
    if tid == 0:
        ran[0] = team
    return team


cdef inline Part share(Py_ssize_t n, int tid, int n_threads) noexcept nogil:
    """Thread tid's part of range(n), split evenly between n_threads"""
    # returned, not written through a pointer: Cython makes a variable private to the threads
    # of a parallel block only where the block assigns it
    cdef Part p
    p.first = n * tid // n_threads
    p.count = n * (tid + 1) // n_threads - p.first
    return p


cdef inline Part own_params(const Layout* L, int part, int tid, int n_threads) noexcept nogil:
    """Thread tid's share, as backward splits them, of part 2l (layer l's weights: rows of W)
    or part 2l + 1 (its bias) of the parameters, as a range of the parameter layout"""
    cdef int l = part // 2
    cdef Py_ssize_t n_out = L.sizes[l + 1]
    cdef Part p
    if part % 2 == 0:
        p = share(L.sizes[l], tid, n_threads)
        p.first = L.w_off[l] + p.first * n_out
        p.count = p.count * n_out
        return p
    p = share(n_out, tid, n_threads)
    p.first = L.b_off[l] + p.first
    return p


cdef const floating* forward(const Layout* L, const floating* params, const floating* x,
                             floating* ws, Py_ssize_t cap, Py_ssize_t rows, bint training,
                             uint64_t seed, uint64_t step, Py_ssize_t row0, int tid,
                             int n_threads) noexcept nogil:
    """Run every layer on rows of x (rows × n_0), which are the rows row0, row0 + 1, … of the
    batch (where they go in the workspace, and for dropout's masks); return the output layer's
    a (rows × n_L). n_threads threads run this together on the same rows (every one of them
    calls it), each computing its share of every layer's units."""
    cdef const floating* inp = x
    cdef floating* a
    cdef Py_ssize_t n_out
    cdef Part units
    cdef int l
    for l in range(L.n_layers):
        n_out = L.sizes[l + 1]
        a = ws + cap * L.a_col[l] + row0 * n_out
        units = share(n_out, tid, n_threads)
        dense_forward(ws + cap * L.z_col[l] + row0 * n_out, a, inp, params + L.w_off[l],
                      params + L.b_off[l], <int>rows, L.sizes[l], <int>n_out, <int>units.first,
                      <int>(units.first + units.count), L.kinds[l], <floating>L.slope)
        inp = a
        if training and L.dropout[l] > 0:
            dropout_forward(ws + cap * L.o_col[l] + row0 * n_out, a, rows, n_out, units.first,
                            units.first + units.count, row0, L.dropout[l], seed + <uint64_t>l,
                            step)
            inp = ws + cap * L.o_col[l] + row0 * n_out
        if n_threads > 1:
            thread_barrier()    # the layer's every unit is in inp
    return inp


cdef void backward(const Layout* L, const floating* params, floating* grad, const floating* x,
                   floating* ws, Py_ssize_t cap, Py_ssize_t rows, int tid, int n_threads,
                   bint accumulate, bint training, uint64_t seed, uint64_t step,
                   double* penalty) noexcept nogil:
    """With dL/d(output) in the d0 buffer for the rows of x (rows × n_0), write (or add, when
    accumulate) dL/dparams to grad. n_threads threads run this together (every one of them
    calls it), each with its own rows of the output's delta, and for every layer its own units
    of the delta and its own parameters (own_params); a barrier per layer.
    With penalty, also add the L2 term to those parameters' gradient and its loss to penalty."""
    cdef floating* d = ws + cap * L.d0_col
    cdef floating* d_below = ws + cap * L.d1_col
    cdef floating* swap
    cdef const floating* inp
    cdef Part r = share(rows, tid, n_threads), c, w, b   # this thread's rows and units of d
    cdef Py_ssize_t n_in, n_out
    cdef int l
    for l in range(L.n_layers - 1, -1, -1):
        n_in = L.sizes[l]
        n_out = L.sizes[l + 1]
        if l < L.n_layers - 1:      # below the output: every row, this thread's units
            r = share(rows, 0, 1)
            c = share(n_out, tid, n_threads)
        else:                       # the output's delta, from the loss: its rows
            c = share(n_out, 0, 1)
        if training and L.dropout[l] > 0:   # d is dL/do; make it dL/da
            dropout_backward(d + r.first * n_out, r.count, n_out, c.first, c.first + c.count,
                             r.first, L.dropout[l], seed + <uint64_t>l, step)
        dense_backward_delta(d + r.first * n_out, ws + cap * L.a_col[l] + r.first * n_out,
                             ws + cap * L.z_col[l] + r.first * n_out, <int>r.count, <int>n_out,
                             <int>c.first, <int>(c.first + c.count), L.kinds[l],
                             <floating>L.slope)
        if n_threads > 1:
            thread_barrier()    # every row's and unit's dL/dz is in d
        inp = x if l == 0 else ws + cap * (L.o_col[l - 1] if training else L.a_col[l - 1])
        w = share(n_in, tid, n_threads)     # rows of W, and units of the layer below
        b = share(n_out, tid, n_threads)
        dense_backward_params(grad + L.w_off[l], grad + L.b_off[l], d, inp, <int>rows,
                              <int>n_in, <int>n_out, <int>w.first, <int>(w.first + w.count),
                              <int>b.first, <int>(b.first + b.count), accumulate)
        if penalty != NULL and L.l2 > 0:
            penalty[0] += l2_term(L.l2, params + L.w_off[l] + w.first * n_out,
                                  grad + L.w_off[l] + w.first * n_out, w.count * n_out)
        if l > 0:
            dense_backward_input(d_below, d, params + L.w_off[l], <int>rows, <int>n_in,
                                 <int>n_out, <int>w.first, <int>(w.first + w.count))
        swap = d
        d = d_below
        d_below = swap


cdef double l2_penalty(const Layout* L, const floating* params, floating* grad) noexcept nogil:
    """grad += l2·W for every weight matrix; return l2/2 · Σ‖W‖² (biases are not penalised)"""
    cdef double total = 0
    cdef int l
    if L.l2 > 0:
        for l in range(L.n_layers):
            total += l2_term(L.l2, params + L.w_off[l], grad + L.w_off[l],
                             L.b_off[l] - L.w_off[l])
    return total


cdef inline double l2_term(double l2, const floating* W, floating* dW,
                           Py_ssize_t n) noexcept nogil:
    """dW += l2·W; return l2/2 · ‖W‖² (n elements)"""
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += <double>W[i] * W[i]
        dW[i] += <floating>l2 * W[i]
    return 0.5 * l2 * total


cdef floating _loss_scale(const Layout* L, const floating* weights, const Py_ssize_t* idx,
                          Py_ssize_t rows) noexcept nogil:
    """1 / (the loss's normaliser) for the rows idx[:rows] (or the first rows when idx is NULL):
    Σw (or the row count) × the outputs per row for the element-wise losses; 0 when every
    weight is 0, so such rows contribute nothing"""
    cdef const floating* w = weights
    cdef double total = rows
    cdef Py_ssize_t i
    if w != NULL:
        total = 0
        for i in range(rows):
            total += w[idx[i] if idx != NULL else i]
    if L.loss != SOFTMAX_CROSS_ENTROPY:
        total *= L.sizes[L.n_layers]
    return <floating>(1 / total) if total > 0 else 0


cdef Py_ssize_t _capacity(const Layout* L, Py_ssize_t n_params, Py_ssize_t ws_size) except -1:
    if n_params != L.n_params:
        raise ValueError(f"params has {n_params} elements, the network {L.n_params}")
    if ws_size < L.row_width:
        raise ValueError("the workspace holds no row")
    return ws_size // L.row_width


cdef int _check_targets(const Layout* L, Py_ssize_t n, const floating[:, ::1] X,
                        const int[::1] labels, const floating[:, ::1] targets,
                        const floating[::1] weights,
                        const Py_ssize_t[::1] rows=None) except -1:
    """Shapes, and the labels of the rows used (all, or those listed in rows) in range"""
    cdef Py_ssize_t i, r, k = L.sizes[L.n_layers]
    if X.shape[1] != L.sizes[0] or n < 1:
        raise ValueError("X has the wrong shape")
    if (labels is None) == (targets is None):
        raise ValueError("give either labels or targets")
    if labels is not None:
        if L.loss != SOFTMAX_CROSS_ENTROPY or labels.shape[0] != n:
            raise ValueError("labels need the softmax loss and one label per row")
        for i in range(n if rows is None else rows.shape[0]):
            r = i if rows is None else rows[i]
            if not 0 <= labels[r] < k:
                raise ValueError(f"label {labels[r]} is out of range for {k} classes")
    if targets is not None and (targets.shape[0] != n or targets.shape[1] != k):
        raise ValueError("targets have the wrong shape")
    if weights is not None and weights.shape[0] != n:
        raise ValueError("weights have the wrong size")
    return 0
