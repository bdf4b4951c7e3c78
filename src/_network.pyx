"""The engine's Python face: a network's layout (layout.pxd) and thin wrappers that run its
passes (passes.pxd) and training steps (step.pxd) in single nogil calls.

Every wrapper takes the team size its caller planned (cdnn/_engine.py) and opens a parallel
region only for a team of more than one thread; it holds no policy. The Python layer validates
every argument; the checks here only guard memory safety.
"""

import os

import numpy as np
cimport numpy as cnp
from cython cimport floating
from libc.stdint cimport intptr_t, uint16_t, uint64_t, uintptr_t

from activations cimport keeps_preactivation, activate
from layout cimport Layout, n_outputs
from team cimport team_work, team_run, team_set_spin, share
from passes cimport (DENSE_ROWS, CSR_ROWS, Input, Rows, forward_chunks, forward_one, rows_pass,
                     l2_penalty, loss_scale, finite)
from step cimport (Step, train_steps, N_PARTIALS, STEP_OK, LOSS_NOT_FINITE, NORM_NOT_FINITE,
                   EXCHANGE_FAILED, UPDATE_NOT_FINITE)
from exchange cimport MPIContext, mpi_allreduce, mpi_exchange
from losses cimport SOFTMAX_CROSS_ENTROPY, softmax
from optim cimport (OptimizerConfig, OptimizerState, make_config, named_state,
                   state_buffers, optimizer_update)
from matmul cimport (Matmul, bf16_gemm_fn, sgemm_fn, get_threads_fn, set_threads_fn, is_bf16,
                     to_bf16, product)

cdef extern from *:
    """
    static int cpu_has_avx2(void) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");   /* and the OS saves its registers */
    #else
        return 0;
    #endif
    }
    """
    bint cpu_has_avx2() noexcept nogil

cdef extern from *:
    # threadpoolctl's limit on cdnn's pool (cdnn/threads.py's controller sets it through these
    # exported symbols, which is also how threadpoolctl recognises this library); 0: none
    """
    #if defined(__GNUC__)
    #define CDNN_EXPORT __attribute__((visibility("default")))
    #elif defined(_WIN32)
    #define CDNN_EXPORT __declspec(dllexport)
    #else
    #define CDNN_EXPORT
    #endif
    static volatile int cdnn_pool_limit = 0;
    CDNN_EXPORT int cdnn_pool_get_thread_limit(void) { return cdnn_pool_limit; }
    CDNN_EXPORT void cdnn_pool_set_thread_limit(int n) { cdnn_pool_limit = n > 0 ? n : 0; }
    """
    int cdnn_pool_get_thread_limit() noexcept nogil

cnp.import_array()

# Why a training step stopped (step.pxd's Status)
STEP_FAILURES = {LOSS_NOT_FINITE: "the loss is not finite",
                 NORM_NOT_FINITE: "the gradient's norm is not finite",
                 EXCHANGE_FAILED: "the gradient exchange failed",
                 UPDATE_NOT_FINITE: "the update made a parameter or the optimizer's state "
                                    "non-finite"}


cdef class Network:
    """The shape of a dense network (widths, activations, loss, dropout), its choice of matrix
    product (matmul.pxd) and its passes. Activations and the loss are given by their kernel ids
    (cdnn/kinds.py).

    matmul: None (BLAS in the network's dtype) or oneDNN's products (cdnn/_onednn.py finds
    them; float32 parameters only): (the address of dnnl_gemm_bf16bf16f32 for bf16 products,
    or 0; of dnnl_sgemm, or 0; the smallest n and n·k of a product that takes dnnl_sgemm; the
    addresses of omp_get_max_threads and omp_set_num_threads of oneDNN's OpenMP runtime)."""
    cdef Layout layout
    cdef Matmul mm
    # the arrays the layout points into
    cdef int[::1] _sizes, _kinds
    cdef double[::1] _rates
    cdef Py_ssize_t[::1] _offsets
    cdef readonly Py_ssize_t n_params, row_width
    cdef readonly bint bf16

    def __init__(self, sizes, activations, int loss, double slope=0.01, dropout=None,
                 double l2=0.0, matmul=None):
        cdef Py_ssize_t n_layers = len(sizes) - 1
        sizes_ = np.asarray(sizes, dtype=np.intc)
        kinds = np.asarray(activations, dtype=np.intc)
        rates = np.zeros(n_layers) if dropout is None else np.asarray(dropout, dtype=np.float64)
        if n_layers < 1 or kinds.shape[0] != n_layers or rates.shape[0] != n_layers:
            raise ValueError("need one activation and one dropout rate per layer")
        if np.any(sizes_ < 1):
            raise ValueError("layer widths must be positive")
        self._sizes, self._kinds, self._rates = sizes_, kinds, rates
        self._offsets = np.zeros(6 * n_layers, dtype=np.intp)
        self.layout.mm, self.layout.h_col = NULL, NULL
        if matmul is not None:
            bf16_gemm, sgemm, min_n, min_nk, get_threads, set_threads = matmul
            self._set_matmul(bf16_gemm, sgemm, min_n, min_nk, get_threads, set_threads)
        self._lay_out(sizes_, kinds, rates)
        self.layout.n_layers = <int>n_layers
        self.layout.loss = loss
        self.layout.sizes = &self._sizes[0]
        self.layout.kinds = &self._kinds[0]
        self.layout.dropout = &self._rates[0]
        self.layout.slope = slope
        self.layout.l2 = l2
        self.n_params = self.layout.n_params
        self.row_width = self.layout.row_width

    cdef _set_matmul(self, intptr_t bf16_gemm, intptr_t sgemm, int min_n, long min_nk,
                    intptr_t get_threads, intptr_t set_threads):
        if (bf16_gemm == 0 and sgemm == 0) or get_threads == 0 or set_threads == 0:
            raise ValueError("oneDNN's products need a GEMM's and the OpenMP runtime's "
                             "addresses")
        self.mm.bf16 = <bf16_gemm_fn>bf16_gemm
        self.mm.sgemm = <sgemm_fn>sgemm
        self.mm.sgemm_min_n, self.mm.sgemm_min_nk = min_n, min_nk
        self.mm.get_threads = <get_threads_fn>get_threads
        self.mm.set_threads = <set_threads_fn>set_threads
        self.layout.mm, self.bf16 = &self.mm, bf16_gemm != 0

    cdef _lay_out(self, const int[::1] sizes, const int[::1] kinds, const double[::1] rates):
        """The offsets of every parameter and workspace buffer (layout.pxd), in Py_ssize_t
        arithmetic: widths near int32's limit must not overflow their sums"""
        cdef Py_ssize_t n_layers = kinds.shape[0], p = 0, col = 0, l, n_out
        cdef Py_ssize_t* off = &self._offsets[0]
        cdef Layout* L = &self.layout
        L.w_off, L.b_off, L.a_col = off, off + n_layers, off + 2 * n_layers
        L.z_col, L.o_col = off + 3 * n_layers, off + 4 * n_layers
        for l in range(n_layers):
            n_out = sizes[l + 1]
            off[l] = p                                      # W_l
            off[n_layers + l] = p + <Py_ssize_t>sizes[l] * n_out      # b_l
            p = off[n_layers + l] + n_out
            off[2 * n_layers + l] = col                     # a
            col += n_out
            off[3 * n_layers + l] = off[2 * n_layers + l]   # z: a unless kept
            if keeps_preactivation(kinds[l]):
                off[3 * n_layers + l] = col
                col += n_out
            off[4 * n_layers + l] = off[2 * n_layers + l]   # o: a unless dropped out
            if rates[l] > 0:
                off[4 * n_layers + l] = col
                col += n_out
        widest = int(np.max(sizes[1:]))
        if self.bf16:       # bf16 rows of width w in columns of 4 bytes: (w + 1) // 2
            L.h_col = off + 5 * n_layers
            for l in range(n_layers):
                off[5 * n_layers + l] = col
                col += (sizes[l] + 1) // 2
            L.hd0_col = col
            L.hd1_col = col + (widest + 1) // 2
            col += 2 * ((widest + 1) // 2)
        L.d0_col = col
        L.d1_col = col + widest
        L.t_col = col + 2 * widest
        L.sw_col = L.t_col + sizes[n_layers]
        L.row_width = L.sw_col + 1
        L.n_params = p

    def forward(self, const floating[::1] params, X, floating[:, ::1] out,
                floating[::1] workspace, int n_threads=1, bint share_units=False):
        """out := the output layer's values (logits) for every row of X (a 2-D array or CSR
        rows, of params' dtype: _input); dropout is off. A team
        of n_threads threads takes a share of the rows each, in chunks of its part of the
        workspace, or with share_units every row and a share of each layer's units
        (passes.pxd's forward_chunks)."""
        cdef Layout* L = &self.layout
        cdef Py_ssize_t n = 0
        cdef Py_ssize_t cap = _capacity(L, params.shape[0],
                                        workspace.shape[0] // (1 if share_units else n_threads))
        cdef Input x = _input(X, &params[0], L, &n)
        if out.shape[0] != n or out.shape[1] != n_outputs(L):
            raise ValueError("out has the wrong shape")
        cdef ForwardCall call
        wh = self._half_weights(params)
        call.wh = _half_data(wh)
        call.L, call.params, call.x, call.n, call.out = L, &params[0], x, n, &out[0, 0]
        call.workspace, call.cap, call.share_units = &workspace[0], cap, share_units
        call.double_precision = floating is double
        _run_team(<team_work>_forward_call, &call, n_threads)

    def forward_row(self, cnp.ndarray params, X):
        """The output layer's values (1 × n_L) for X when X is what a single prediction usually
        is: a numpy array of params' dtype holding one C-contiguous, aligned, native-order row
        of n_0 finite values, whose outputs are finite; else None, and forward must take X
        (converting it, or naming what is wrong with it or its outputs). A small row's
        arithmetic takes a few µs: forward's typed arguments and the Python layer's checks
        would add about 3 µs, these checks 0.1."""
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
        shape[0], shape[1] = 1, n_outputs(L)
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

    def loss_and_grad(self, const floating[::1] params, batch, floating[:, ::1] grads,
                      floating[::1] workspace):
        """grads[0] := dL/dparams of the mean loss over all rows of the batch (cdnn._engine's
        Batch: X, labels or targets, weights) plus the L2 penalty;
        returns the loss. A team of len(grads) threads takes a contiguous share of the rows
        each, in chunks of its part of the workspace, into its own row of grads; the rows are
        then summed in a fixed order."""
        cdef int n_threads = grads.shape[0], t, team
        cdef Py_ssize_t i, n = grads.shape[1]
        if n != params.shape[0]:
            raise ValueError("grads has the wrong size")
        loss, _, ran = self._over_rows(params, batch, workspace, n_threads, &grads[0, 0])
        team = ran
        cdef double total = loss
        with nogil:
            for t in range(1, team):
                for i in range(n):
                    grads[0, i] += grads[t, i]
            total += l2_penalty(&self.layout, &params[0], &grads[0, 0])
        return total

    def evaluate(self, const floating[::1] params, batch, floating[::1] workspace,
                 int n_threads=1):
        """Returns (the mean loss, Σ w over correct predictions) over all rows of the batch (as
        loss_and_grad's); dropout is off, the L2 penalty is not included. Rows are shared
        between threads as in forward."""
        loss, correct, _ = self._over_rows(params, batch, workspace, n_threads, NULL)
        return loss, correct

    cdef tuple _over_rows(self, const floating[::1] params, batch, floating[::1] workspace,
                          int n_threads, floating* grads):
        """(loss, correct, the team that ran) over all rows of the batch and, when grads is not
        NULL, each thread's gradient in grads[thread]"""
        cdef Layout* L = &self.layout
        cdef Py_ssize_t cap = _capacity(L, params.shape[0], workspace.shape[0] // n_threads)
        cdef Py_ssize_t n = 0
        cdef Rows data = _rows(batch, &params[0], L, &n)
        cdef floating scale = loss_scale(L, <const floating*>data.weights, NULL, n)
        cdef double[:, ::1] part = np.zeros((n_threads, 2))
        cdef RowsCall call
        wh = self._half_weights(params)
        call.wh = _half_data(wh)
        call.L, call.params, call.data, call.n = L, &params[0], &data, n
        call.workspace, call.cap, call.scale, call.grads = &workspace[0], cap, scale, grads
        call.part, call.double_precision = &part[0, 0], floating is double
        _run_team(<team_work>_rows_call, &call, n_threads)
        totals = np.asarray(part).sum(axis=0)   # fixed order: deterministic
        return float(totals[0]), float(totals[1]), n_threads

    def _half_weights(self, const floating[::1] params):
        """params' bf16 copy for a call's bf16 products (None without them): the caller's
        parameters may have changed since the last call"""
        if not self.bf16:
            return None
        if floating is double:
            raise TypeError("bf16 products need float32 parameters")
        wh = np.empty(params.shape[0], dtype=np.uint16)
        cdef uint16_t[::1] h = wh
        with nogil:
            to_bf16(&h[0], &params[0], 1, params.shape[0], 0, 0)
        return wh


# --- the team calls: each parallel pass as a struct of its arguments and a function that every
# thread of the team runs (team.pxd's team_run) ------------------------------------------------

cdef int _run_team(team_work work, void* call, int n_threads) except -1:
    """work(call, tid, team) on a team of n_threads, without the GIL"""
    cdef int err
    with nogil:
        err = team_run(work, call, n_threads)
    if err != 0:
        raise MemoryError(f"cdnn could not start a team of {n_threads} threads with their BLAS "
                          f"buffers ({os.strerror(err)}): free memory, or use fewer threads "
                          f"(cdnn.set_num_threads)")
    return 0


cdef struct ForwardCall:
    const Layout* L
    const void* params
    const uint16_t* wh          # bf16 products: params' bf16 copy
    Input x
    Py_ssize_t n, cap
    void* out
    void* workspace
    bint share_units, double_precision


cdef void _forward_call(void* arg, int tid, int team) noexcept nogil:
    cdef ForwardCall* c = <ForwardCall*>arg
    if c.double_precision:
        _forward_share(c, <double*>c.out, tid, team)
    else:
        _forward_share(c, <float*>c.out, tid, team)


cdef inline void _forward_share(ForwardCall* c, floating* out, int tid, int team) noexcept nogil:
    forward_chunks(c.L, <const floating*>c.params, c.wh, c.x, c.n, out, <floating*>c.workspace,
                   c.cap, tid, team, c.share_units)


cdef struct RowsCall:
    const Layout* L
    const void* params
    const uint16_t* wh          # bf16 products: params' bf16 copy
    const Rows* data
    Py_ssize_t n, cap
    void* workspace
    double scale
    void* grads                 # NULL: no gradient
    double* part                # (team, 2): each thread's loss and count of correct rows
    bint double_precision


cdef void _rows_call(void* arg, int tid, int team) noexcept nogil:
    cdef RowsCall* c = <RowsCall*>arg
    if c.double_precision:
        _rows_share(c, <double*>c.workspace, tid, team)
    else:
        _rows_share(c, <float*>c.workspace, tid, team)


cdef inline void _rows_share(RowsCall* c, floating* workspace, int tid, int team) noexcept nogil:
    """Thread tid's contiguous share of the n rows, in its own part of the workspace and, with
    grads, into its own row of grads"""
    cdef floating* grads = <floating*>c.grads
    rows_pass(c.L, <const floating*>c.params, c.wh, c.data, c.n * tid // team,
              c.n * (tid + 1) // team, workspace + tid * c.cap * c.L.row_width, c.cap,
              <floating>c.scale, grads + tid * c.L.n_params if grads != NULL else NULL,
              &c.part[2 * tid], &c.part[2 * tid + 1])


cdef struct StepsCall:
    Step* S
    const Py_ssize_t* order
    Py_ssize_t n_order, batch, n_steps, done
    const double* lrs
    long step0
    double* losses
    double* corrects
    bint double_precision


cdef void _steps_call(void* arg, int tid, int team) noexcept nogil:
    cdef StepsCall* c = <StepsCall*>arg
    if c.double_precision:
        _steps_share(c, <const double*>c.S.params, tid, team)
    else:
        _steps_share(c, <const float*>c.S.params, tid, team)


cdef inline void _steps_share(StepsCall* c, const floating* params, int tid,
                              int team) noexcept nogil:
    """train_steps for thread tid: the whole run of steps in one team call"""
    cdef Py_ssize_t done = train_steps(c.S, params, c.order, c.n_order, c.batch, c.lrs,
                                       c.n_steps, c.step0, c.losses, c.corrects, tid, team)
    if tid == 0:
        c.done = done


cdef class TrainingSteps:
    """A fit's training steps: the Step (step.pxd) over the network, the training rows and the
    buffers of the fit, built once; run() makes a run of steps in one nogil call."""
    cdef Step step
    cdef Network net
    cdef list keep          # the arrays the Step points into
    cdef int n_threads
    cdef Py_ssize_t n_rows, entry_room
    cdef bint double_precision
    cdef double[:, ::1] partial
    cdef MPIExchange mpi
    cdef object wh          # bf16 products: the parameters' bf16 copy

    def __init__(self, Network net, *, params, grad, dict state, dict optimizer, train,
                 workspace, label_buffer, batch_buffer, int n_threads=1, double clip_norm=0,
                 uint64_t seed=0, lazy=None):
        """params, grad: the flat buffers; state: the optimizer's buffers by name (optim.pxd's
        OptimizerState), optimizer its kernel_config(); train: the training rows (cdnn._engine's
        Batch). batch_buffer receives each gathered batch: for dense X, an array of the
        workspace's rows × n_0; for CSR rows, CSR rows of as many rows (indptr zeroed) whose
        indices and values hold the largest batch's entries (run() checks every batch against
        it). lazy, for the lazy update of CSR rows (step.pxd; grad must then be zero): touched,
        n_0 zeroed bytes; touched_rows, room (intp) for the most rows of W₁ a batch can touch;
        undo, (1 + the state's buffers) × (that × n_1 + the other parameters) of params' dtype."""
        X = train.X
        if n_threads < 1:
            raise ValueError("n_threads must be positive")
        if (batch_buffer.__class__ is np.ndarray) != (X.__class__ is np.ndarray):
            raise ValueError("X and batch_buffer must be of one kind")
        self.net, self.n_threads, self.n_rows = net, n_threads, X.shape[0]
        self.double_precision = params.dtype == np.float64
        if net.bf16 and self.double_precision:
            raise TypeError("bf16 products need float32 parameters")
        self.keep = [params, grad, state, train, workspace, label_buffer, batch_buffer, lazy]
        self.partial = np.zeros((n_threads, N_PARTIALS))
        cdef Step* S = &self.step
        S.opt = make_config(optimizer)
        if self.double_precision:
            _bind_step[double](S, &net.layout, params, grad, state, train, workspace,
                               label_buffer, batch_buffer)
        else:
            _bind_step[float](S, &net.layout, params, grad, state, train, workspace,
                              label_buffer, batch_buffer)
        self.entry_room = len(batch_buffer.indices) if S.data.x.kind == CSR_ROWS else 0
        S.touched = NULL
        if lazy is not None:
            self._bind_lazy(lazy.touched, lazy.touched_rows, lazy.undo)
        S.clip_norm, S.seed = clip_norm, seed
        S.exchange, S.exchange_context = NULL, NULL
        S.partial = &self.partial[0, 0]
        S.gscale, S.status = 1, STEP_OK
        S.wh = NULL
        if net.bf16:
            self.wh = np.empty(net.n_params, dtype=np.uint16)
            S.wh = _half_data(self.wh)

    cdef _bind_lazy(self, unsigned char[::1] touched, Py_ssize_t[::1] touched_rows, undo):
        cdef Step* S = &self.step
        cdef Py_ssize_t n_0 = S.L.sizes[0], n_1 = S.L.sizes[1]
        cdef Py_ssize_t rest = S.L.n_params - n_0 * n_1
        cdef cnp.ndarray buffer = undo
        if S.data.x.kind != CSR_ROWS or touched.shape[0] != n_0:
            raise ValueError("the lazy update needs CSR rows and a mark per input column")
        if touched_rows.shape[0] < min(self.entry_room, n_0):
            raise ValueError("touched_rows holds fewer rows than a batch can touch")
        if (buffer.dtype != (np.float64 if self.double_precision else np.float32)
                or not buffer.flags.c_contiguous
                or buffer.size < (1 + S.n_kept) * (touched_rows.shape[0] * n_1 + rest)):
            raise ValueError("undo is too small, or not of params' dtype")
        S.touched, S.touched_rows, S.batch.clean_grad = &touched[0], &touched_rows[0], True
        S.n_rooms, S.undo_part = touched_rows.shape[0], touched_rows.shape[0] * n_1 + rest
        S.undo = cnp.PyArray_DATA(buffer)

    def exchange_over(self, MPIExchange mpi=None):
        """Sum each step's gradient across processes through mpi (None: one process)"""
        if mpi is not None and (mpi.ctx.itemsize != (8 if self.double_precision else 4)
                                or mpi.n != self.step.L.n_params):
            raise ValueError("the exchange was made for another network or dtype")
        self.mpi = mpi
        self.step.exchange, self.step.exchange_context = NULL, NULL
        if mpi is not None:
            self.step.exchange, self.step.exchange_context = mpi_exchange, &mpi.ctx

    def run(self, const Py_ssize_t[::1] order, int batch_size, const double[::1] lrs,
            long step0, double[::1] losses, double[::1] corrects):
        """Run len(lrs) training steps (step.pxd's train_steps) over the rows in order, batch
        by batch, with optimizer step numbers step0 + 1, …; losses[s] and corrects[s] receive
        step s's mean loss and weighted count of correct predictions. Returns (steps
        completed, why the next one failed or None, whether the parameters hold that failed
        update — the caller then restores them from a copy and replays the good steps)."""
        cdef Step* S = &self.step
        cdef Py_ssize_t n_steps = lrs.shape[0], n = order.shape[0], i, done = 0
        for i in range(n):
            if not 0 <= order[i] < self.n_rows:
                raise ValueError("order holds a row index out of range")
        if batch_size < 1 or batch_size > S.cap:
            raise ValueError("batch_size exceeds the workspace")
        if (losses.shape[0] < n_steps or corrects.shape[0] < n_steps
                or not (n_steps - 1) * <Py_ssize_t>batch_size < n <= n_steps * batch_size):
            raise ValueError("order and lrs disagree on the number of steps")
        if S.data.x.kind == CSR_ROWS:
            _check_entry_room(S.data.x.indptr, order, batch_size, self.entry_room)
        S.status = STEP_OK
        cdef StepsCall call
        call.S, call.order, call.n_order, call.batch = S, &order[0], n, batch_size
        call.lrs, call.n_steps, call.step0, call.done = &lrs[0], n_steps, step0, 0
        call.losses, call.corrects = &losses[0], &corrects[0]
        call.double_precision = self.double_precision
        _run_team(<team_work>_steps_call, &call, self.n_threads)
        done = call.done
        failure = STEP_FAILURES.get(S.status) if done < n_steps else None
        if failure is not None and S.status != UPDATE_NOT_FINITE:   # failed before its update
            losses[done] = S.loss
        # the lazy update restores a failed one itself
        return done, failure, S.status == UPDATE_NOT_FINITE and S.touched == NULL


cdef class MPIExchange:
    """The exchange phase over MPI (exchange.pxd): MPI_Allreduce's address and the handles it
    takes, found at run time by cdnn/distributed.py, for n parameters of itemsize bytes."""
    cdef MPIContext ctx
    cdef readonly Py_ssize_t n
    cdef object recv, factors, uniform

    def __init__(self, intptr_t allreduce, bint pointer_handles, uintptr_t comm,
                 uintptr_t op_sum, uintptr_t grad_type, uintptr_t double_type, intptr_t in_place,
                 Py_ssize_t n, int itemsize):
        if allreduce == 0 or itemsize not in (4, 8) or n < 1:
            raise ValueError("MPIExchange needs MPI_Allreduce's address, n > 0, itemsize 4 or 8")
        self.n = n
        self.ctx.allreduce, self.ctx.pointer_handles = <void*>allreduce, pointer_handles
        self.ctx.comm, self.ctx.op_sum = comm, op_sum
        self.ctx.grad_type, self.ctx.double_type = grad_type, double_type
        self.ctx.in_place, self.ctx.itemsize = <void*>in_place, itemsize
        self.ctx.recv = NULL
        if in_place == 0:
            self.recv = np.empty(n * itemsize, dtype=np.uint8)
            self.ctx.recv = <void*>cnp.PyArray_DATA(self.recv)
        self.set_factors(np.ones(0), np.ones(0, dtype=np.uint8))

    def set_factors(self, factors, uniform):
        """The next steps' loss factors f and whether each is the same on every process
        (exchange.pxd); the steps after them use f = 1, as one process does"""
        self.factors = np.ascontiguousarray(factors, dtype=np.float64)
        self.uniform = np.ascontiguousarray(uniform, dtype=np.uint8)
        if self.factors.shape != self.uniform.shape or self.factors.ndim != 1:
            raise ValueError("factors and uniform must be 1-D of one length")
        self.ctx.factors = <const double*>cnp.PyArray_DATA(self.factors)
        self.ctx.uniform = <const char*>cnp.PyArray_DATA(self.uniform)
        self.ctx.n_factors, self.ctx.next = self.factors.shape[0], 0

    def allreduce(self, a):
        """a := Σ a over the processes through the native call, as a step sums its gradient
        (in place when the library's MPI_IN_PLACE is known): a contiguous 1-D float32 or
        float64 array. The check that the handles are right, and the benchmark's probe."""
        cdef cnp.ndarray arr = a
        cdef intptr_t dtype = self.ctx.double_type
        cdef int err
        if arr.ndim != 1 or not arr.flags.c_contiguous or arr.dtype not in (np.float32,
                                                                            np.float64):
            raise ValueError("allreduce takes a contiguous 1-D float32 or float64 array")
        if arr.dtype == np.float32:
            if self.ctx.itemsize != 4:
                raise ValueError("this exchange sums float64 arrays")
            dtype = self.ctx.grad_type
        cdef cnp.ndarray out = arr if self.ctx.in_place != NULL else np.empty_like(arr)
        cdef void* send = self.ctx.in_place if self.ctx.in_place != NULL else cnp.PyArray_DATA(arr)
        cdef void* recv = cnp.PyArray_DATA(out)
        cdef Py_ssize_t count = arr.shape[0], itemsize = arr.itemsize
        with nogil:
            err = mpi_allreduce(&self.ctx, send, recv, count, dtype, itemsize)
        if err != 0:
            raise RuntimeError(f"MPI_Allreduce failed with error code {err}")
        if out is not arr:
            arr[...] = out


cdef int _bind_step(Step* S, const Layout* L, floating[::1] params, floating[::1] grad,
                    dict state, train, floating[::1] workspace, int[::1] label_buffer,
                    batch_buffer) except -1:
    """Point the Step at a fit's arrays, after checking their sizes (S.opt is set)"""
    cdef Py_ssize_t n = 0, room = 0
    S.data = _rows(train, &params[0], L, &n)
    if not grad.shape[0] == params.shape[0] == L.n_params:
        raise ValueError("params or grad has the wrong size")
    S.state = named_state(&S.opt, state, &params[0], L.n_params)
    S.n_kept = state_buffers(&S.state, S.kept)
    S.L = L
    S.cap = _capacity(L, params.shape[0], workspace.shape[0])
    if label_buffer.shape[0] < S.cap:
        raise ValueError("label_buffer holds fewer rows than the workspace")
    S.batch = _input(batch_buffer, &params[0], L, &room)
    if room < S.cap:
        raise ValueError("batch_buffer holds fewer rows than the workspace")
    S.params, S.grad = &params[0], &grad[0]
    S.ws = &workspace[0]
    S.labels = &label_buffer[0]
    return 0


cdef uint16_t* _half_data(wh) except? NULL:
    """The data of a bf16 copy (a C-contiguous uint16 array), NULL for None"""
    cdef uint16_t[::1] h
    if wh is None:
        return NULL
    h = wh
    return &h[0]


# --- production helpers the Python layer calls ------------------------------------------------

def cpu_supports_avx2():
    """Whether this CPU (and OS) can run the AVX2 build of the kernels"""
    return cpu_has_avx2()


def pool_thread_limit():
    """threadpoolctl's limit on cdnn's pool (threadpool_limits), 0 when none"""
    return cdnn_pool_get_thread_limit()


def set_spin_ns(long ns):
    """How long a waiting thread of a team spins before it sleeps, in ns (for the benchmark
    that measures it, bench/spin_wait.py)"""
    team_set_spin(ns)


def all_finite(const floating[::1] a):
    """Whether no element of a is NaN or ±inf (the input validation's check: one vectorised
    pass, without numpy's per-call overhead, which dominates for a single row)"""
    cdef bint ok = True
    if a.shape[0] > 0:
        with nogil:
            ok = finite(&a[0], a.shape[0])
    return ok


def softmax_rows(floating[:, ::1] z):
    """z := softmax(z), row by row, in place"""
    with nogil:
        softmax(&z[0, 0], &z[0, 0], z.shape[0], z.shape[1])


def apply_activation(floating[:, ::1] z, int activation, double slope=0.01):
    """z := f(z), in place, for the activation of this kernel id (cdnn/kinds.py)"""
    cdef Py_ssize_t i, n = z.shape[0] * z.shape[1]
    cdef floating* p = &z[0, 0]
    with nogil:
        for i in range(n):
            p[i] = activate(p[i], activation, <floating>slope)


def optimizer_step(dict config, double lr, long step, floating[::1] params,
                   const floating[::1] grad, dict state, double gscale=1):
    """One update of params (and state, the optimizer's buffers by name) by the optimizer the
    config describes; returns whether it made a parameter non-finite"""
    cdef Py_ssize_t n = params.shape[0]
    if grad.shape[0] != n:
        raise ValueError("params and grad must have one size")
    cdef OptimizerConfig c = make_config(config)
    cdef OptimizerState s = named_state(&c, state, &params[0], n)
    cdef int bad = 0
    with nogil:
        bad = optimizer_update(&c, <floating>lr, step, &params[0], &grad[0], &s, 0, n,
                               <floating>gscale)
    return bad != 0


# the arguments into the structs the passes run on, each checked for memory safety
include "arguments.pxi"
