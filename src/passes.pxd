# The passes of a network over a batch: every layer forward, every layer backward, the loss
# between them, and the passes over many rows that predict, evaluate and loss_and_grad run.
#
# Threads: a pass that takes (tid, team) is shared by a team (team.pxd) and every thread of the
# team calls it. forward shares each layer's units (so each thread packs only its part of each
# W); backward shares the output's rows for dL/dz, then every layer's units of dL/dz, its own
# rows of dW (units of the layer below) and entries of db — each parameter's gradient is one
# product over the whole batch, so no thread keeps a gradient of its own.
# GEMMs are single-threaded here: the caller holds the BLAS at one thread.
# At bf16 (matmul.pxd) the products read bf16 copies: wh of the weights (params' layout, made
# by the caller), and in the workspace each layer's input and dL/dz, written by the passes that
# write the float values (half() finds them).

from cython cimport floating
from libc.math cimport NAN
from libc.stdint cimport uint16_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memset

from layout cimport Layout, n_outputs
from matmul cimport Matmul, is_bf16, to_bf16
from team cimport Part, share, whole, barrier
from dense cimport (dense_forward, dense_backward_delta, dense_backward_params,
                   dense_backward_input)
from dropout cimport dropout_forward, dropout_backward
from activations cimport bias_activation_forward, bias_gradient
from losses cimport loss_forward_backward, count_correct, SOFTMAX_CROSS_ENTROPY


# --- the input: the rows the first layer reads ---------------------------------------------
# A seam with one kind per storage. Only rows_from, gather_rows, input_forward and
# input_backward read an Input; everything above the first layer sees dense activations.

cdef enum InputKind:
    DENSE_ROWS = 0          # X (n, n_0), row-major, of the network's dtype
    CSR_ROWS = 1            # compressed sparse rows: row i's stored entries are k in
                            # indptr[i]..indptr[i+1]-1, at column indices[k], of value X[k]


cdef struct Input:
    int kind
    Py_ssize_t n_cols, itemsize
    const char* X               # DENSE_ROWS: the rows; CSR_ROWS: the stored values
    const Py_ssize_t* indptr    # CSR_ROWS: offsets into indices and X (absolute: a view of
    const int* indices          #   rows keeps the arrays and offsets indptr only)
    bint clean_grad             # CSR_ROWS: dW₁ is zero on entry to the backward pass (the
                                #   lazy update keeps it so), so the scatter needn't clear it


cdef inline Input rows_from(Input x, Py_ssize_t start) noexcept nogil:
    """The rows start, start + 1, … of x"""
    if x.kind == CSR_ROWS:
        x.indptr = x.indptr + start
    else:
        x.X = x.X + start * x.n_cols * x.itemsize
    return x


cdef inline void gather_rows(Input* batch, const Input* data, const Py_ssize_t* idx,
                             Part mine) noexcept nogil:
    """batch's rows mine := the data's rows idx[mine], into the batch's buffers (dense rows,
    or CSR arrays with room for the batch's entries). A CSR thread finds where its rows start
    by counting the entries of the rows before them itself: no thread waits, and the batch
    is the same for any team."""
    cdef Py_ssize_t i, width = data.n_cols * data.itemsize, pos = 0, start, count
    cdef Py_ssize_t* indptr = <Py_ssize_t*>batch.indptr
    if data.kind == DENSE_ROWS:
        for i in range(mine.first, mine.first + mine.count):
            memcpy(<char*>batch.X + i * width, data.X + idx[i] * width, width)
        return
    for i in range(mine.first):
        pos += data.indptr[idx[i] + 1] - data.indptr[idx[i]]
    if mine.first == 0:
        indptr[0] = 0
    for i in range(mine.first, mine.first + mine.count):
        start = data.indptr[idx[i]]
        count = data.indptr[idx[i] + 1] - start
        memcpy(<int*>batch.indices + pos, data.indices + start, count * sizeof(int))
        memcpy(<char*>batch.X + pos * data.itemsize, data.X + start * data.itemsize,
               count * data.itemsize)
        pos += count
        indptr[i + 1] = pos


# x is (rows, n_0); z, a are (rows, n_out): the first layer, in the units first:last
cdef inline void input_forward(floating* z, floating* a, const Input* x, const floating* W,
                               const floating* b, int rows, int n_out, Part units, int kind,
                               floating slope, const Matmul* mm, const uint16_t* x_h,
                               const uint16_t* W_h, uint16_t* a_h) noexcept nogil:
    """z := x @ W + b; a := f(z) (and a_h := bf16(a)). CSR rows take no bf16 product: theirs
    is no GEMM"""
    if x.kind == CSR_ROWS:
        csr_forward(z, a, x, W, b, rows, n_out, units, kind, slope, a_h)
        return
    dense_forward(z, a, <const floating*>x.X, W, b, rows, <int>x.n_cols, n_out,
                  <int>units.first, <int>(units.first + units.count), kind, slope, mm, x_h,
                  W_h, a_h)


cdef inline void csr_forward(floating* z, floating* a, const Input* x, const floating* W,
                             const floating* b, int rows, int n_out, Part units, int kind,
                             floating slope, uint16_t* a_h) noexcept nogil:
    """z[:, units] := x @ W[:, units] + b, row by row: each stored entry adds its value times
    its row of W (the units' part of it, contiguous) to z's row, which then gets its bias and
    activation while it is in cache"""
    cdef const floating* values = <const floating*>x.X
    cdef const floating* w
    cdef floating* zr
    cdef floating v
    cdef Py_ssize_t r, k, j, first = units.first, count = units.count
    if count == 0:
        return
    for r in range(rows):
        zr = z + r * n_out + first
        for j in range(count):
            zr[j] = 0
        for k in range(x.indptr[r], x.indptr[r + 1]):
            v = values[k]
            w = W + <Py_ssize_t>x.indices[k] * n_out + first
            for j in range(count):
                zr[j] += v * w[j]
        bias_activation_forward(zr, a + r * n_out + first, b + first, 1, count, n_out, kind,
                                slope, a_h + r * n_out + first if a_h != NULL else NULL)


# d is dL/dz (rows, n_out); the first layer needs no dL/dx
cdef inline void input_backward(floating* dW, floating* db, const floating* d, const Input* x,
                                int rows, int n_out, Part w, Part b, bint accumulate,
                                int team, const Matmul* mm, const uint16_t* x_h,
                                const uint16_t* d_h) noexcept nogil:
    """dW[w] (+)= x[:, w]ᵀ @ d; db[b] (+)= Σ_rows d. With CSR rows, each thread takes the units
    b of dW (every row of it) instead of the rows w, and the team waits for the whole of dW
    before anyone reads it (the L2 term goes by rows). Every thread of the team calls this."""
    if x.kind == CSR_ROWS:
        csr_backward(dW, d, x, rows, n_out, b, accumulate)
        bias_gradient(db, d, rows, n_out, b.first, b.first + b.count, accumulate)
        barrier(team)
        return
    dense_backward_params(dW, db, d, <const floating*>x.X, rows, <int>x.n_cols, n_out,
                          <int>w.first, <int>(w.first + w.count), <int>b.first,
                          <int>(b.first + b.count), accumulate, mm, x_h, d_h)


cdef inline void csr_backward(floating* dW, const floating* d, const Input* x, int rows,
                              int n_out, Part units, bint accumulate) noexcept nogil:
    """dW[:, units] (+)= xᵀ @ d[:, units]: zeroed (unless accumulate), then a scatter of each
    stored entry's value times its row of d into the row of dW of its column. A thread owns
    its units of every row of dW, so the scatter needs no atomics and sums in a fixed order."""
    cdef const floating* values = <const floating*>x.X
    cdef const floating* dr
    cdef floating* g
    cdef floating v
    cdef Py_ssize_t r, k, j, c, first = units.first, count = units.count
    if count == 0:
        return
    if not accumulate and not x.clean_grad:
        for c in range(x.n_cols):
            memset(dW + c * n_out + first, 0, count * sizeof(floating))
    for r in range(rows):
        dr = d + r * n_out + first
        for k in range(x.indptr[r], x.indptr[r + 1]):
            v = values[k]
            g = dW + <Py_ssize_t>x.indices[k] * n_out + first
            for j in range(count):
                g[j] += v * dr[j]


# --- the network's passes --------------------------------------------------------------------

cdef inline uint16_t* half(const Layout* L, floating* ws, Py_ssize_t cap, Py_ssize_t col,
                          Py_ssize_t row0, Py_ssize_t width) noexcept nogil:
    """The bf16 buffer at column col of the workspace, from row row0 (rows width apart); NULL
    without bf16 products"""
    if not is_bf16(L.mm):
        return NULL
    return <uint16_t*>(ws + cap * col) + row0 * width


cdef inline uint16_t* input_h(const Layout* L, floating* ws, Py_ssize_t cap, int l,
                             Py_ssize_t row0) noexcept nogil:
    """The bf16 copy of layer l's input (n_l wide), from row row0; NULL without bf16"""
    if not is_bf16(L.mm):
        return NULL
    return half(L, ws, cap, L.h_col[l], row0, L.sizes[l])


cdef inline const uint16_t* weights_h(const Layout* L, const uint16_t* wh, int l) noexcept nogil:
    """Layer l's bf16 weights in wh (params' layout), or NULL"""
    return wh + L.w_off[l] if is_bf16(L.mm) else NULL


cdef inline const floating* forward(const Layout* L, const floating* params,
                                    const uint16_t* wh, const Input* x, floating* ws,
                                    Py_ssize_t cap, Py_ssize_t rows, bint training,
                                    uint64_t seed, uint64_t step, Py_ssize_t row0, int tid,
                                    int team) noexcept nogil:
    """Run every layer on the rows of x, which are the rows row0, row0 + 1, … of the batch
    (where they go in the workspace, and for dropout's masks); return the output layer's a
    (rows × n_L). Every thread of the team calls this; each computes its share of every
    layer's units, and waits for the others after each layer. At bf16 the products read wh,
    and each layer writes the bf16 copy of its output for the next."""
    cdef const floating* inp = NULL
    cdef floating* a
    cdef floating* z
    cdef floating* o
    cdef uint16_t* h_in = input_h(L, ws, cap, 0, row0)
    cdef uint16_t* h_out
    cdef Py_ssize_t n_out
    cdef Part units, mine
    cdef int l
    cdef bint dropped
    if h_in != NULL and x.kind == DENSE_ROWS:     # the input rows, each thread its share
        mine = share(rows, tid, team)
        to_bf16(h_in + mine.first * L.sizes[0],
                <const floating*>x.X + mine.first * L.sizes[0], mine.count, L.sizes[0],
                L.sizes[0], L.sizes[0])
        barrier(team)
    for l in range(L.n_layers):
        n_out = L.sizes[l + 1]
        a = ws + cap * L.a_col[l] + row0 * n_out
        z = ws + cap * L.z_col[l] + row0 * n_out
        units = share(n_out, tid, team)
        dropped = training and L.dropout[l] > 0
        h_out = input_h(L, ws, cap, l + 1, row0) if l + 1 < L.n_layers else NULL
        if l == 0:
            input_forward(z, a, x, params + L.w_off[0], params + L.b_off[0], <int>rows,
                          <int>n_out, units, L.kinds[0], <floating>L.slope, L.mm, h_in,
                          weights_h(L, wh, 0), NULL if dropped else h_out)
        else:
            dense_forward(z, a, inp, params + L.w_off[l], params + L.b_off[l], <int>rows,
                          L.sizes[l], <int>n_out, <int>units.first,
                          <int>(units.first + units.count), L.kinds[l], <floating>L.slope,
                          L.mm, h_in, weights_h(L, wh, l), NULL if dropped else h_out)
        inp = a
        if dropped:
            o = ws + cap * L.o_col[l] + row0 * n_out
            dropout_forward(o, a, rows, n_out, units.first, units.first + units.count, row0,
                            L.dropout[l], seed + <uint64_t>l, step)
            if h_out != NULL:
                to_bf16(h_out + units.first, o + units.first, rows, units.count, n_out, n_out)
            inp = o
        h_in = h_out
        barrier(team)       # the layer's every unit is in inp
    return inp


cdef inline void backward(const Layout* L, const floating* params, const uint16_t* wh,
                          floating* grad, const Input* x, floating* ws, Py_ssize_t cap,
                          Py_ssize_t rows,
                          bint accumulate, bint training, uint64_t seed, uint64_t step,
                          double* penalty, int tid, int team) noexcept nogil:
    """With dL/d(output) in the d0 buffer for the batch's rows (each thread's share of the rows
    written by the loss), write (or add, when accumulate) dL/dparams to grad. Every thread of
    the team calls this; each takes its rows of the output's delta, then for every layer its
    units of the delta and its own parameters, with a barrier per layer. With penalty, also add
    the L2 term to those parameters' gradient and its loss to penalty[0]. At bf16 the products
    read wh and the forward pass's bf16 inputs, and the delta pass writes dL/dz's bf16 copy
    (two buffers, ping-ponged as d is: a thread may start the next layer's delta while
    another still reads this layer's)."""
    cdef floating* d = ws + cap * L.d0_col
    cdef floating* d_below = ws + cap * L.d1_col
    cdef floating* swap
    cdef uint16_t* hd = half(L, ws, cap, L.hd0_col, 0, 0)
    cdef uint16_t* hd_below = half(L, ws, cap, L.hd1_col, 0, 0)
    cdef uint16_t* hswap
    cdef Part r = share(rows, tid, team), c, w, b   # this thread's rows and units of d
    cdef Py_ssize_t n_in, n_out
    cdef int l
    for l in range(L.n_layers - 1, -1, -1):
        n_in = L.sizes[l]
        n_out = L.sizes[l + 1]
        c = whole(n_out)                # the output's delta: this thread's rows, every unit
        if l < L.n_layers - 1:          # below it: every row, this thread's units
            r = whole(rows)
            c = share(n_out, tid, team)
        if training and L.dropout[l] > 0:   # d is dL/do; make it dL/da
            dropout_backward(d + r.first * n_out, r.count, n_out, c.first, c.first + c.count,
                             r.first, L.dropout[l], seed + <uint64_t>l, step)
        dense_backward_delta(d + r.first * n_out, ws + cap * L.a_col[l] + r.first * n_out,
                             ws + cap * L.z_col[l] + r.first * n_out, <int>r.count, <int>n_out,
                             <int>c.first, <int>(c.first + c.count), L.kinds[l],
                             <floating>L.slope, hd + r.first * n_out if hd != NULL else NULL)
        barrier(team)       # every row's and unit's dL/dz is in d
        w = share(n_in, tid, team)      # rows of W, and units of the layer below
        b = share(n_out, tid, team)
        layer_backward(L, l, params, wh, grad, d, hd, d_below, x, ws, cap, rows, w, b,
                       accumulate, training, team)
        if penalty != NULL and L.l2 > 0:
            penalty[0] += l2_term(L.l2, params + L.w_off[l] + w.first * n_out,
                                  grad + L.w_off[l] + w.first * n_out, w.count * n_out)
        swap, hswap = d, hd
        d, hd = d_below, hd_below
        d_below, hd_below = swap, hswap


cdef inline void layer_backward(const Layout* L, int l, const floating* params,
                                const uint16_t* wh, floating* grad, const floating* d,
                                const uint16_t* hd, floating* d_below, const Input* x,
                                floating* ws, Py_ssize_t cap, Py_ssize_t rows, Part w, Part b,
                                bint accumulate, bint training, int team) noexcept nogil:
    """Layer l's rows w of dW and entries b of db from its dL/dz (d; hd its bf16 copy), and
    the units w of the layer below's dL/da (d_below); the first layer reads the input and has
    no layer below"""
    cdef int n_in = L.sizes[l], n_out = L.sizes[l + 1]
    cdef const floating* inp
    cdef const uint16_t* inp_h = input_h(L, ws, cap, l, 0)
    if l == 0:
        input_backward(grad + L.w_off[0], grad + L.b_off[0], d, x, <int>rows, n_out, w, b,
                       accumulate, team, L.mm, inp_h, hd)
        return
    inp = ws + cap * (L.o_col[l - 1] if training else L.a_col[l - 1])
    dense_backward_params(grad + L.w_off[l], grad + L.b_off[l], d, inp, <int>rows, n_in, n_out,
                          <int>w.first, <int>(w.first + w.count), <int>b.first,
                          <int>(b.first + b.count), accumulate, L.mm, inp_h, hd)
    dense_backward_input(d_below, d, params + L.w_off[l], <int>rows, n_in, n_out, <int>w.first,
                         <int>(w.first + w.count), L.mm, hd, weights_h(L, wh, l))


cdef inline double l2_term(double l2, const floating* W, floating* dW,
                           Py_ssize_t n) noexcept nogil:
    """dW += l2·W; return l2/2 · ‖W‖² (n elements)"""
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(n):
        total += <double>W[i] * W[i]
        dW[i] += <floating>l2 * W[i]
    return 0.5 * l2 * total


cdef inline double l2_penalty(const Layout* L, const floating* params,
                              floating* grad) noexcept nogil:
    """grad += l2·W for every weight matrix; return l2/2 · Σ‖W‖² (biases are not penalised)"""
    cdef double total = 0
    cdef int l
    if L.l2 > 0:
        for l in range(L.n_layers):
            total += l2_term(L.l2, params + L.w_off[l], grad + L.w_off[l],
                             L.b_off[l] - L.w_off[l])
    return total


# --- the rows of a dataset, as predict, evaluate and loss_and_grad see them --------------------

cdef struct Rows:
    # one dataset; one of labels and targets is NULL, weights may be
    Input x                     # (n, n_0)
    const int* labels           # (n,)
    const void* targets         # (n, n_L) of the fused type
    const void* weights         # (n,)


cdef inline floating loss_scale(const Layout* L, const floating* weights, const Py_ssize_t* idx,
                                Py_ssize_t rows) noexcept nogil:
    """1 / (the loss's normaliser) for the rows idx[:rows] (or the first rows when idx is
    NULL): Σw (or the row count) × the outputs per row for the element-wise losses; 0 when
    every weight is 0, so such rows contribute nothing"""
    cdef double total = rows
    cdef Py_ssize_t i
    if weights != NULL:
        total = 0
        for i in range(rows):
            total += weights[idx[i] if idx != NULL else i]
    if L.loss != SOFTMAX_CROSS_ENTROPY:
        total *= n_outputs(L)
    return <floating>(1 / total) if total > 0 else 0


cdef inline void rows_pass(const Layout* L, const floating* params, const uint16_t* wh,
                           const Rows* data,
                           Py_ssize_t first, Py_ssize_t last, floating* ws, Py_ssize_t cap,
                           floating scale, floating* grad, double* loss,
                           double* correct) noexcept nogil:
    """The rows first..last of the data, in chunks of cap rows, on one thread, without
    dropout: forward and loss (loss and correct := their share); with grad, also backward,
    summing the chunks' gradients into grad (zero when there are no rows)."""
    cdef Py_ssize_t start = first, rows, k = n_outputs(L)
    cdef const floating* targets = <const floating*>data.targets
    cdef const floating* weights = <const floating*>data.weights
    cdef const int* labels
    cdef const floating* t
    cdef const floating* w
    cdef const floating* out
    cdef Input x
    loss[0] = 0
    correct[0] = 0
    if grad != NULL and last <= first:
        memset(grad, 0, L.n_params * sizeof(floating))
    while start < last:
        rows = min(cap, last - start)
        x = rows_from(data.x, start)
        labels = data.labels + start if data.labels != NULL else NULL
        t = targets + start * k if targets != NULL else NULL
        w = weights + start if weights != NULL else NULL
        out = forward(L, params, wh, &x, ws, cap, rows, False, 0, 0, 0, 0, 1)
        loss[0] += loss_forward_backward(L.loss, out, labels, t, w, scale, ws + cap * L.d0_col,
                                         rows, k)
        correct[0] += count_correct(L.loss, out, labels, t, w, rows, k)
        if grad != NULL:
            backward(L, params, wh, grad, &x, ws, cap, rows, start > first, False, 0, 0, NULL,
                     0, 1)
        start += rows


cdef inline void forward_chunks(const Layout* L, const floating* params, const uint16_t* wh,
                                Input x, Py_ssize_t n,
                                floating* out, floating* workspace, Py_ssize_t cap, int tid,
                                int team, bint share_units) noexcept nogil:
    """Thread tid's part of the output layer's values (out, n × n_L) for the n rows of x,
    in chunks of cap rows: a contiguous share of the rows in its own part of the workspace or,
    with share_units, every row in the whole workspace and a share of every layer's units (for
    a few rows, a share of the rows leaves threads idle, while a share of the units splits the
    weights each thread must read). Every thread of the team calls this.
    Dense rows are checked for NaN and ±inf here, chunk by chunk, just before the chunk's
    product reads them (which then finds them in cache): a chunk holding one gets NaN outputs,
    which the caller takes as its cue to find and name the value. A separate pass over all of
    X on the calling thread took a fifth of a 10,000-row prediction on 784-128-10."""
    cdef Py_ssize_t k = n_outputs(L), start, stop, rows, i, j
    cdef int part = tid if share_units else 0, parts = team if share_units else 1
    cdef Part mine = share(n, tid, team) if not share_units else whole(n)
    cdef Part units = share(k, part, parts)
    cdef floating* ws = workspace + (0 if share_units else tid * cap * L.row_width)
    cdef const floating* result
    cdef floating* row
    cdef Input chunk
    cdef bint ok
    start = mine.first
    stop = mine.first + mine.count
    while start < stop:
        rows = min(cap, stop - start)
        chunk = rows_from(x, start)
        ok = x.kind != DENSE_ROWS or finite(<const floating*>chunk.X, rows * x.n_cols)
        result = forward(L, params, wh, &chunk, ws, cap, rows, False, 0, 0, 0, part, parts)
        for i in range(rows):   # this thread's units of the output
            row = out + (start + i) * k + units.first
            if ok:
                memcpy(row, result + i * k + units.first, units.count * sizeof(floating))
            else:
                for j in range(units.count):
                    row[j] = NAN
        start += rows


cdef inline bint finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether no element of a is NaN or ±inf (one vectorised pass)"""
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= a[i] - a[i] != 0     # NaN for NaN and ±inf alone
    return not bad


cdef inline bint forward_one(const Layout* L, const floating* params, const floating* row,
                             floating* out) noexcept nogil:
    """out (1 × n_L) := the output layer's values for one row, on this thread, in a workspace of
    its own (so concurrent predictions need no lock); False when the row holds a non-finite
    value (out untouched), the output does (a finite row can overflow a layer), or there is no
    memory. Not for bf16 products, whose weights need their bf16 copy."""
    cdef Input x
    if is_bf16(L.mm) or not finite(row, L.sizes[0]):
        return False
    cdef floating* ws = <floating*>malloc(L.row_width * sizeof(floating))
    if ws == NULL:
        return False
    x.kind, x.n_cols, x.itemsize, x.X = DENSE_ROWS, L.sizes[0], sizeof(floating), <const char*>row
    memcpy(out, forward(L, params, NULL, &x, ws, 1, 1, False, 0, 0, 0, 0, 1),
           n_outputs(L) * sizeof(floating))
    free(ws)
    return finite(out, n_outputs(L))
