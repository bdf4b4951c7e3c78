"""The launch sequence of a network's passes on the device: a workspace of device buffers, and
forward, loss, backward and the sums, as kernel launches and GEMMs (the CUDA twin of
src/passes.pxd). One code path: on a GPU the launches of a run of training steps are captured
as a CUDA graph; on the stand-in the same launches run as they are issued.
"""
from __future__ import annotations

import numpy as np

from cdnn.cuda import kernels

THREADS = 256           # per block, for every element-wise kernel
MAX_BLOCKS = 4096       # grid-stride beyond: enough to fill any current GPU
PARTIAL_BLOCKS = 64     # a norm's or penalty's first pass: PARTIAL_BLOCKS × THREADS partials
SUM_THREADS = 32        # the second pass sums those in as many threads, the third in one
CHUNK_ROWS = 64         # rows per partial column sum of the bias gradient
NULL = np.uint64(0)
i32, i64, f64 = np.int32, np.int64, np.float64


class Launcher:
    """The kernels for one dtype, launched over n elements (grid-stride) or by one thread."""

    def __init__(self, module, dtype):
        self.dtype, self.T = np.dtype(dtype), np.dtype(dtype).type
        self.f = {name: module.get_function(kernels.kernel_name(name, dtype))
                  for name in kernels.TEMPLATES + kernels.PLAIN}
        for f in self.f.values():   # CuPy: each function looked up now, not in a capture
            getattr(f, "kernel", None)

    def over(self, name: str, n: int, *args):
        blocks = max(1, min(MAX_BLOCKS, -(-int(n) // THREADS)))
        self.f[name]((blocks,), (THREADS,), args)

    def one(self, name: str, *args):
        self.f[name]((1,), (1,), args)

    def partials(self, name: str, *args):
        self.f[name]((PARTIAL_BLOCKS,), (THREADS,), args)

    def total(self, values, n: int, scratch, out, pairs: bool):
        """out := the sum of values[:n] (pairs: of their (·, 2) pairs), in a fixed order"""
        m = i32(min(SUM_THREADS, max(1, n)))
        self.f["strided_sum"]((1,), (SUM_THREADS,), (values, i64(n), scratch, m, i32(pairs)))
        self.one("strided_sum", scratch, i64(m), out, i32(1), i32(pairs))


class Workspace:
    """Device buffers for passes over up to cap rows: per layer its output a, pre-activation z
    (GELU only, else a) and dropped-out output o (dropout only, else a); two deltas of the
    widest layer; the gathered batch; per-row loss statistics; the sums."""

    def __init__(self, engine, cap: int, training: bool):
        xp, T, sizes = engine.xp, engine.dtype, engine.sizes
        self.cap = cap
        empty = lambda *shape, dtype=T: xp.empty(shape, dtype)
        self.a = [empty(cap, n) for n in sizes[1:]]
        self.z = [empty(cap, n) if kind == "gelu" else a
                  for a, n, kind in zip(self.a, sizes[1:], engine.activations)]
        self.o = [empty(cap, n) if training and rate > 0 else a
                  for a, n, rate in zip(self.a, sizes[1:], engine.dropout)]
        widest = max(sizes[1:])
        self.d = [empty(cap * widest), empty(cap * widest)]
        self.partial = empty(-(-cap // CHUNK_ROWS) * widest)
        self.stats = empty(cap, 2, dtype=np.float64)
        self.scratch = empty(2 * SUM_THREADS, dtype=np.float64)
        self.sums = xp.zeros(2, np.float64)
        self.scale = xp.zeros(1, T)
        self.norm_partials = empty(len(engine.sizes) * PARTIAL_BLOCKS * THREADS,
                                   dtype=np.float64)
        self.penalty = xp.zeros(1, np.float64)
        self.flag = xp.zeros(1, np.int32)
        if training:    # the gathered batch
            self.x = empty(cap, sizes[0])
            self.labels = empty(cap, dtype=np.int32)
            self.targets = empty(cap, sizes[-1])
            self.weights = empty(cap)

    def delta(self, which: int, rows: int, cols: int):
        return self.d[which][:rows * cols].reshape(rows, cols)


class Passes:
    """A network's passes as launches on its engine's device, for a given workspace."""

    def __init__(self, engine):
        self.e, self.k = engine, engine.launcher
        self.T = engine.launcher.T

    def forward(self, ws: Workspace, W, b, x, rows: int, training=False, seed=0, step0=None,
                s=0):
        """Every layer on x (rows × n_0); returns the output layer's a (rows × n_L). Dropout
        (training) uses the masks of step step0[0] + s + 1."""
        e, k, inp = self.e, self.k, x
        for l, n_out in enumerate(e.sizes[1:]):
            z, a = ws.z[l][:rows], ws.a[l][:rows]
            e.backend.gemm(inp, W[l], z, precision=e.matmul_precision)
            k.over("bias_activation", rows * n_out, z, a, b[l], i64(rows), i32(n_out),
                   i32(e.kind_codes[l]), self.T(e.slope))
            inp = a
            if training and e.dropout[l] > 0:
                inp = ws.o[l][:rows]
                k.over("dropout", rows * n_out, inp, a, i64(rows), i32(n_out),
                       f64(e.dropout[l]), np.uint64((seed + l) % 2**64), step0, i32(s))
        return inp

    def loss(self, ws: Workspace, out, rows: int, labels, targets, weights):
        """dL/d(output) into the first delta, each row's w·ℓ and correct count into stats,
        and their sums into ws.sums; ws.scale must hold the loss's scale"""
        e, k = self.e, self.k
        delta = ws.delta(0, rows, e.n_outputs)
        k.over("loss_delta", rows, i32(e.loss_code), out, _ptr(labels), _ptr(targets),
               _ptr(weights), ws.scale, delta, ws.stats, i64(rows), i32(e.n_outputs))
        k.total(ws.stats, rows, ws.scratch, ws.sums, pairs=True)

    def backward(self, ws: Workspace, W, dW, db, x, rows: int, training=False, seed=0,
                 step0=None, s=0, accumulate=False):
        """With dL/d(output) in the first delta, write (or add to) the gradient dW, db"""
        e, k, T = self.e, self.k, self.T
        which = 0
        for l in range(len(W) - 1, -1, -1):
            n_in, n_out = e.sizes[l], e.sizes[l + 1]
            d = ws.delta(which, rows, n_out)
            if training and e.dropout[l] > 0:       # d is dL/do: make it dL/da
                k.over("dropout", rows * n_out, d, d, i64(rows), i32(n_out), f64(e.dropout[l]),
                       np.uint64((seed + l) % 2**64), step0, i32(s))
            chunks = -(-rows // CHUNK_ROWS)
            direct = chunks == 1 and not accumulate     # one chunk's sums are db itself
            k.over("activation_backward_bias", chunks * n_out, d, ws.a[l][:rows],
                   ws.z[l][:rows], i64(rows), i32(n_out), i32(e.kind_codes[l]), T(e.slope),
                   db[l] if direct else ws.partial, i64(CHUNK_ROWS))
            if not direct:
                k.over("sum_chunks", n_out, db[l], ws.partial, i64(chunks), i32(n_out),
                       i32(accumulate))
            inp = x if l == 0 else (ws.o if training else ws.a)[l - 1][:rows]
            e.backend.gemm(inp, d, dW[l], trans_a=True, accumulate=accumulate,
                           precision=e.matmul_precision)
            if l > 0:
                e.backend.gemm(d, W[l], ws.delta(1 - which, rows, n_in), trans_b=True,
                               precision=e.matmul_precision)
            which = 1 - which

    def l2(self, ws: Workspace, W, dW):
        """dW += l2·W for every layer; ws.penalty := Σ‖W‖²"""
        per_layer = PARTIAL_BLOCKS * THREADS
        for l, (w, dw) in enumerate(zip(W, dW)):
            self.k.partials("l2_gradient", dw, w, i64(w.size), self.T(self.e.l2),
                            ws.norm_partials[l * per_layer:(l + 1) * per_layer])
        self.k.total(ws.norm_partials, len(W) * per_layer, ws.scratch, ws.penalty, pairs=False)

    def sum_of_squares(self, ws: Workspace, x, out):
        """out[0] := Σ x² (the gradient's norm, squared)"""
        per_layer = PARTIAL_BLOCKS * THREADS
        self.k.partials("sum_squares", x, i64(x.size), ws.norm_partials[:per_layer])
        self.k.total(ws.norm_partials, per_layer, ws.scratch, out, pairs=False)

    def loss_scale(self, ws: Workspace, weights, rows: int):
        """ws.scale := 1/(Σw or rows), × 1/k for the element-wise losses"""
        self.k.one("loss_scale", _ptr(weights), i64(rows),
                   i32(1 if self.e.loss == "softmax_cross_entropy" else self.e.n_outputs),
                   ws.scale)


def _ptr(a):
    return NULL if a is None else a
