# One training step, as its phases, and the run of steps that one native call makes:
#
#   gather    the batch's rows by index (dense or CSR, passes.pxd's gather_rows) and their
#             labels, targets and weights into the workspace
#   forward   every layer, each thread its share of the units          (passes.pxd)
#   loss      loss and output delta, each thread its share of the rows
#   backward  every layer: dW = aᵀ·δ, db, δ for the layer below        (passes.pxd)
#   exchange  the gradient summed across processes (data-parallel); nothing in one process
#   clip      the gradient scaled to a global norm, when asked
#   update    the optimizer, each thread the parameters whose gradient it computed
#
# A Step (built once per fit, in _network.pyx) holds the buffers and settings. Every phase is
# called by every thread of the team (team.pxd); phases end with a barrier, and what thread 0
# combines between two barriers (the loss, the norm, the status) every thread then reads.
# Reductions run in a fixed order, so a step is deterministic for a given team size.

from cython cimport floating
from libc.math cimport isfinite, sqrt
from libc.stdint cimport uint16_t, uint64_t
from libc.string cimport memcpy, memset

from layout cimport Layout, n_outputs
from team cimport Part, share, barrier
from passes cimport Input, Rows, CSR_ROWS, gather_rows, forward, backward, loss_scale
from losses cimport loss_forward_backward, count_correct
from optim cimport (OptimizerConfig, OptimizerState, MAX_STATE, optimizer_update,
                   sum_of_squares)
from matmul cimport to_bf16


# The exchange phase's contract: called by one thread while the others wait, with the full
# gradient of this process's rows in grad (n parameters of the network's dtype) and the step's
# local results in x. It sums across processes: grad in place (unless x.failed says some
# process's step failed: then grad is left alone), and x's loss, correct and failed; it sets
# x.gscale to the factor the update still applies to the summed gradient. Returns 0, or
# non-zero to stop training. No thread touches the parameters until it returns. NULL: one
# process, nothing to exchange.
cdef struct Exchange:
    double loss                 # in: this process's loss; out: the step's, over all processes
    double correct              # likewise, the weighted count of correct predictions
    int failed                  # in: this process's loss is not finite; out: any process's is
    double gscale               # out: the summed gradient's factor (1: none)

ctypedef int (*exchange_fn)(void* context, void* grad, Py_ssize_t n,
                            Exchange* x) noexcept nogil

cdef enum Status:
    STEP_OK = 0
    LOSS_NOT_FINITE = 1         # found before the update: parameters untouched
    NORM_NOT_FINITE = 2         # the clipped gradient's norm: parameters untouched
    EXCHANGE_FAILED = 3         # parameters untouched
    UPDATE_NOT_FINITE = 4       # the parameters hold the failed update

cdef enum:
    LOSS = 0                    # a thread's partial results, in Step.partial[tid]
    CORRECT = 1
    NORM = 2
    BAD = 3
    N_PARTIALS = 4


cdef struct Step:
    const Layout* L
    Rows data                   # the training rows; labels are the engine's private copy
    Input batch                 # the gathered batch, in buffers of its own: dense rows, or
                                # CSR rows with room for the largest batch's entries
    void* params                # the flat buffers, of the network's dtype
    uint16_t* wh                # bf16 products: the parameters' bf16 copy (else NULL), made
                                #   at the start of a run and refreshed after each update
    void* grad
    OptimizerConfig opt
    OptimizerState state        # the optimizer's buffers, by name
    void* kept[MAX_STATE]       # the same buffers as a list (optim.pxd's state_buffers), for
    int n_kept                  #   the lazy update's undo
    void* ws                    # the workspace, cap rows
    Py_ssize_t cap
    int* labels                 # the batch's labels (cap,)
    double clip_norm            # 0: no clipping
    uint64_t seed               # dropout masks
    exchange_fn exchange
    void* exchange_context
    double* partial             # (threads asked, N_PARTIALS)
    # the lazy update (CSR rows only; touched NULL: exact). Between steps every mark is 0,
    # and so is dW₁.
    unsigned char* touched      # (n_0,): 1 for the rows of W₁ whose column the batch holds
    Py_ssize_t* touched_rows    # those rows, in the order first seen (room for the most a
    Py_ssize_t n_touched        #   batch can touch: n_rooms)
    Py_ssize_t n_rooms
    void* undo                  # 1 + n_kept parts (the parameters, each kept buffer) of
    Py_ssize_t undo_part        #   undo_part = n_rooms × n_1 + the other parameters: the values
                                #   the lazy update overwrote, restored if it fails
    # written by thread 0 between barriers, read by the team
    double scale, gscale, loss, correct
    int status


cdef inline void gather(Step* S, const floating* params, const Py_ssize_t* idx,
                        Py_ssize_t rows, int tid, int team) noexcept nogil:
    """The batch's rows idx[:rows] into the workspace, each thread its share; thread 0 sets the
    loss's scale for them"""
    cdef const Layout* L = S.L
    cdef Part mine = share(rows, tid, team)
    cdef Py_ssize_t i, k = n_outputs(L)
    cdef floating* ws = <floating*>S.ws
    cdef const floating* targets = <const floating*>S.data.targets
    cdef const floating* weights = <const floating*>S.data.weights
    gather_rows(&S.batch, &S.data.x, idx, mine)
    if S.touched != NULL and tid == 0:      # one writer: no two threads store to one mark
        S.n_touched = mark_columns(S.touched, S.touched_rows, &S.data.x, idx, rows)
    for i in range(mine.first, mine.first + mine.count):
        if S.data.labels != NULL:
            S.labels[i] = S.data.labels[idx[i]]
        if targets != NULL:
            memcpy(ws + S.cap * L.t_col + i * k, targets + idx[i] * k, k * sizeof(floating))
        if weights != NULL:
            ws[S.cap * L.sw_col + i] = weights[idx[i]]
    if tid == 0:
        S.scale = loss_scale(L, weights, idx, rows)
    barrier(team)


cdef inline Py_ssize_t mark_columns(unsigned char* touched, Py_ssize_t* touched_rows,
                                    const Input* x, const Py_ssize_t* idx,
                                    Py_ssize_t rows) noexcept nogil:
    """touched[c] := 1 for every column c with an entry in the rows idx[:rows] of x (CSR),
    listed in touched_rows; returns how many"""
    cdef Py_ssize_t i, k, n = 0
    cdef int c
    for i in range(rows):
        for k in range(x.indptr[idx[i]], x.indptr[idx[i] + 1]):
            c = x.indices[k]
            if not touched[c]:
                touched[c] = 1
                touched_rows[n] = c
                n += 1
    return n


cdef inline void loss(Step* S, const floating* out, Py_ssize_t rows, int tid,
                      int team) noexcept nogil:
    """Each thread's rows of the output (rows × n_L): their loss and weighted count of correct
    predictions into its partials, and dL/d(output) into the d0 buffer"""
    cdef const Layout* L = S.L
    cdef Part r = share(rows, tid, team)
    cdef Py_ssize_t k = n_outputs(L), i = r.first
    cdef floating* ws = <floating*>S.ws
    cdef const int* lab = S.labels + i if S.data.labels != NULL else NULL
    cdef const floating* t = ws + S.cap * L.t_col + i * k if S.data.targets != NULL else NULL
    cdef const floating* w = ws + S.cap * L.sw_col + i if S.data.weights != NULL else NULL
    cdef double* mine = S.partial + tid * N_PARTIALS
    mine[LOSS] = 0
    mine[CORRECT] = 0
    if r.count > 0:
        mine[LOSS] = loss_forward_backward(L.loss, out + i * k, lab, t, w, <floating>S.scale,
                                           ws + S.cap * L.d0_col + i * k, r.count, k)
        mine[CORRECT] = count_correct(L.loss, out + i * k, lab, t, w, r.count, k)


cdef inline void exchange(Step* S, const floating* params, int tid, int team) noexcept nogil:
    """Thread 0 combines the loss (the L2 penalty included) and the count of correct
    predictions; with an exchange, those and the gradient are summed across processes (and
    gscale := the factor the summed gradient still needs)"""
    cdef Exchange x
    cdef int i
    if tid == 0:
        S.loss = 0
        S.correct = 0
        for i in range(team):           # fixed order: deterministic
            S.loss += S.partial[i * N_PARTIALS + LOSS]
            S.correct += S.partial[i * N_PARTIALS + CORRECT]
        S.status = STEP_OK if isfinite(S.loss) else LOSS_NOT_FINITE
        S.gscale = 1
        if S.exchange != NULL:      # called even when this step failed: every process agrees
            x.loss, x.correct, x.failed, x.gscale = S.loss, S.correct, S.status != STEP_OK, 1
            if S.exchange(S.exchange_context, S.grad, S.L.n_params, &x) != 0:
                S.status = EXCHANGE_FAILED
            else:
                S.loss, S.correct, S.gscale = x.loss, x.correct, x.gscale
                S.status = LOSS_NOT_FINITE if x.failed else STEP_OK
    barrier(team)


cdef inline void clip(Step* S, const floating* params, int tid, int team) noexcept nogil:
    """gscale ×= clip_norm / ‖gscale·grad‖ when that norm exceeds clip_norm (any fixed split of
    the sum is deterministic)"""
    cdef Part mine
    cdef double norm = 0
    cdef int i
    if S.clip_norm <= 0:
        return              # gscale stays as the exchange left it
    if S.touched != NULL:   # dW₁ is zero outside the touched rows
        S.partial[tid * N_PARTIALS + NORM] = lazy_sum_of_squares(S, params, tid, team)
    else:
        mine = share(S.L.n_params, tid, team)
        S.partial[tid * N_PARTIALS + NORM] = sum_of_squares(<floating*>S.grad + mine.first,
                                                            mine.count)
    barrier(team)
    if tid == 0:
        for i in range(team):
            norm += S.partial[i * N_PARTIALS + NORM]
        norm = sqrt(norm) * S.gscale
        if not isfinite(norm):
            S.status = NORM_NOT_FINITE
        elif norm > S.clip_norm:
            S.gscale *= S.clip_norm / (norm + 1e-6)
    barrier(team)


cdef inline int update_range(Step* S, const floating* params, floating lr, long step,
                             Py_ssize_t first, Py_ssize_t count) noexcept nogil:
    """The optimizer's update of the parameters first..first + count of the flat buffer, and
    their bf16 copy while they are in cache"""
    cdef int bad = optimizer_update(&S.opt, lr, step, <floating*>S.params,
                                    <const floating*>S.grad, &S.state, first, count,
                                    <floating>S.gscale)
    refresh_half(S, first, count)
    return bad


cdef inline void refresh_half(Step* S, Py_ssize_t first, Py_ssize_t count) noexcept nogil:
    """The bf16 copy of the parameters first..first + count (at bf16 only)"""
    if S.wh != NULL:
        to_bf16(S.wh + first, <const float*>S.params + first, 1, count, count, count)


cdef inline void update(Step* S, const floating* params, floating lr, long step, int tid,
                        int team) noexcept nogil:
    """The optimizer's update, each thread the parameters whose gradient it computed in the
    backward pass (its rows of each W, its entries of each b: still in its cache; an even
    share of the flat buffer instead made D, eight 256-unit layers at batch 64, slower at two
    threads: bench/RESULTS.md); status := UPDATE_NOT_FINITE when it
    made a parameter non-finite. The update is element-wise: any split gives the same bits."""
    cdef const Layout* L = S.L
    cdef Part w, b
    cdef Py_ssize_t n_out
    cdef int t, l, bad = 0
    if S.touched != NULL:
        bad = lazy_update(S, params, lr, step, tid, team)
    else:
        for l in range(L.n_layers):
            n_out = L.sizes[l + 1]
            w = share(L.sizes[l], tid, team)
            b = share(n_out, tid, team)
            bad |= update_range(S, params, lr, step, L.w_off[l] + w.first * n_out,
                                w.count * n_out)
            bad |= update_range(S, params, lr, step, L.b_off[l] + b.first, b.count)
    S.partial[tid * N_PARTIALS + BAD] = bad
    bad = 0
    barrier(team)
    if tid == 0:
        for t in range(team):
            bad |= S.partial[t * N_PARTIALS + BAD] != 0
        if bad:
            S.status = UPDATE_NOT_FINITE
    barrier(team)
    if S.touched != NULL:
        lazy_finish(S, params, S.status == UPDATE_NOT_FINITE, tid, team)


# --- the lazy update (opt-in): the rows of W₁ the batch has no entry for are left alone -------
# (their moments do not decay, weight decay skips them: PyTorch's SparseAdam semantics). W₁ is
# the flat buffer's first n_0 × n_1 parameters; the rest is updated as on the exact path.

cdef inline int lazy_update(Step* S, const floating* params, floating lr, long step, int tid,
                            int team) noexcept nogil:
    """This thread's share of the touched rows of W₁ and of the other parameters, updated after
    putting their values aside in undo; non-zero if a parameter became non-finite"""
    cdef Py_ssize_t n_1 = S.L.sizes[1], w1 = <Py_ssize_t>S.L.sizes[0] * n_1, j, at
    cdef Part mine = share(S.n_touched, tid, team), rest = share(S.L.n_params - w1, tid, team)
    cdef int bad = 0
    for j in range(mine.first, mine.first + mine.count):
        at = S.touched_rows[j] * n_1
        bad |= lazy_run(S, lr, step, at, n_1, j * n_1)
    return bad | lazy_run(S, lr, step, w1 + rest.first, rest.count,
                          S.n_rooms * n_1 + rest.first)


cdef inline int lazy_run(Step* S, floating lr, long step, Py_ssize_t at, Py_ssize_t n,
                         Py_ssize_t slot) noexcept nogil:
    """The parameters at..at+n (and their state) into undo at slot, then updated"""
    cdef floating* undo = <floating*>S.undo + slot
    cdef Py_ssize_t part = S.undo_part
    cdef int k
    memcpy(undo, <floating*>S.params + at, n * sizeof(floating))
    for k in range(S.n_kept):
        memcpy(undo + (k + 1) * part, <floating*>S.kept[k] + at, n * sizeof(floating))
    return update_range(S, <const floating*>S.params, lr, step, at, n)


cdef inline void restore(Step* S, const floating* params, Py_ssize_t at, Py_ssize_t n,
                         Py_ssize_t slot) noexcept nogil:
    """The parameters at..at+n (and their state) back from undo at slot (params: their dtype)"""
    cdef floating* undo = <floating*>S.undo + slot
    cdef Py_ssize_t part = S.undo_part
    cdef int k
    memcpy(<floating*>S.params + at, undo, n * sizeof(floating))
    for k in range(S.n_kept):
        memcpy(<floating*>S.kept[k] + at, undo + (k + 1) * part, n * sizeof(floating))


cdef inline void lazy_finish(Step* S, const floating* params, bint failed, int tid,
                             int team) noexcept nogil:
    """After the update: when it failed, this thread's share restored from undo (no parameter
    keeps the failed step); then its touched rows' gradient and marks cleared for the next step"""
    cdef Py_ssize_t n_1 = S.L.sizes[1], w1 = <Py_ssize_t>S.L.sizes[0] * n_1, j, at
    cdef Part mine = share(S.n_touched, tid, team), rest = share(S.L.n_params - w1, tid, team)
    for j in range(mine.first, mine.first + mine.count):
        at = S.touched_rows[j] * n_1
        if failed:
            restore(S, params, at, n_1, j * n_1)
        memset(<floating*>S.grad + at, 0, n_1 * sizeof(floating))
        S.touched[S.touched_rows[j]] = 0
    if failed:
        restore(S, params, w1 + rest.first, rest.count, S.n_rooms * n_1 + rest.first)
    barrier(team)       # every mark is clear before thread 0 marks the next batch


cdef inline double lazy_sum_of_squares(Step* S, const floating* params, int tid,
                                       int team) noexcept nogil:
    """This thread's share of ‖grad‖², reading only the touched rows of dW₁"""
    cdef Py_ssize_t n_1 = S.L.sizes[1], w1 = <Py_ssize_t>S.L.sizes[0] * n_1, j
    cdef Part mine = share(S.n_touched, tid, team), rest = share(S.L.n_params - w1, tid, team)
    cdef double total = sum_of_squares(<floating*>S.grad + w1 + rest.first, rest.count)
    for j in range(mine.first, mine.first + mine.count):
        total += sum_of_squares(<floating*>S.grad + S.touched_rows[j] * n_1, n_1)
    return total


cdef inline int train_step(Step* S, const floating* params, const Py_ssize_t* idx,
                           Py_ssize_t rows, floating lr, long step, int tid,
                           int team) noexcept nogil:
    """One training step on the data's rows idx[:rows] with learning rate lr (the optimizer's
    step number step, from 1); returns its Status. Every thread of the team calls this."""
    cdef const Layout* L = S.L
    cdef const floating* out
    gather(S, params, idx, rows, tid, team)
    out = forward(L, params, S.wh, &S.batch, <floating*>S.ws, S.cap, rows, True, S.seed,
                  step - 1, 0, tid, team)
    loss(S, out, rows, tid, team)
    backward(L, params, S.wh, <floating*>S.grad, &S.batch, <floating*>S.ws, S.cap, rows, False,
             True, S.seed, step - 1, S.partial + tid * N_PARTIALS + LOSS, tid, team)
    barrier(team)       # the whole gradient is in grad
    exchange(S, params, tid, team)
    if S.status != STEP_OK:
        return S.status
    clip(S, params, tid, team)
    if S.status != STEP_OK:
        return S.status
    update(S, params, lr, step, tid, team)
    return S.status


cdef inline Py_ssize_t train_steps(Step* S, const floating* params, const Py_ssize_t* order,
                                   Py_ssize_t n_order, Py_ssize_t batch, const double* lrs,
                                   Py_ssize_t n_steps, long step0, double* losses,
                                   double* corrects, int tid, int team) noexcept nogil:
    """Steps s = 0, 1, …, n_steps − 1 on the rows order[s·batch : (s+1)·batch], with learning
    rates lrs[s] and step numbers step0 + s + 1; losses[s] and corrects[s] := each step's mean
    loss and weighted count of correct predictions. Returns the steps completed: fewer when one
    failed (S.status says how). Every thread of the team calls this."""
    cdef Py_ssize_t s, start
    cdef Part mine = share(S.L.n_params, tid, team)
    if S.wh != NULL:    # the parameters may have changed since the last run
        refresh_half(S, mine.first, mine.count)
        barrier(team)
    for s in range(n_steps):
        start = s * batch
        if train_step(S, params, order + start, min(batch, n_order - start), <floating>lrs[s],
                      step0 + s + 1, tid, team) != STEP_OK:
            return s
        if tid == 0:
            losses[s] = S.loss
            corrects[s] = S.correct
    return n_steps
