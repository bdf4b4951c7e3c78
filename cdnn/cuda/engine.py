"""The CUDA engine: cdnn's engine interface (cdnn/_engine.py's Engine) on an NVIDIA GPU.

The parameters are one flat device buffer in the network's layout (W_0, b_0, W_1, b_1, …);
net.weights and net.biases are views of it. A fit's data is uploaded once, each step gathers
its batch on the device by index, GEMMs are cuBLAS's, the element-wise work is kernels.cu's,
and a run of steps is one CUDA graph (cdnn/cuda/steps.py). Validation is the CPU engine's:
the same checks and messages, before anything reaches the device.
"""
from __future__ import annotations

import threading

import numpy as np

from cdnn import kinds
from cdnn._engine import Batch, Engine
from cdnn._native import _network
from cdnn.cuda import backend as backends
from cdnn.cuda.passes import Launcher, Passes, Workspace, i32, i64
from cdnn.cuda.predict import Plans

# rows per forward chunk when predicting or evaluating, within WORKSPACE_BYTES of buffers
CHUNK_ROWS = 65536
WORKSPACE_BYTES = 256 << 20
KEEP_UPLOADS = 2        # validated batches kept on the device (training and validation rows)


class CudaEngine:
    """Runs one network's passes on the GPU of its backend (cdnn/cuda/backend.py)."""

    device = "cuda"

    def __init__(self, layer_sizes, activations, loss: str, slope: float, dropout, l2: float,
                 dtype, matmul_precision: str = "float32", backend=None):
        if matmul_precision not in backends.PRECISIONS:
            raise ValueError(f"matmul_precision on the GPU must be one of "
                             f"{', '.join(backends.PRECISIONS)}, got {matmul_precision!r}")
        self.backend = backend or backends.current()
        self.xp = self.backend.xp
        self.host = Engine(layer_sizes, activations, loss, slope, dropout, l2, dtype)
        self.sizes, self.activations = list(layer_sizes), list(activations)
        self.dropout, self.slope = list(dropout), slope
        self.kind_codes = [kinds.ACTIVATIONS[a].kernel for a in activations]
        self.loss, self.loss_code, self.l2 = loss, kinds.LOSSES[loss].kernel, l2
        self.dtype = np.dtype(dtype)
        self.matmul_precision = "float32" if self.dtype == np.float64 else matmul_precision
        self.matmul_engine = f"cuBLAS {self.matmul_precision}"
        self.n_inputs, self.n_outputs = layer_sizes[0], layer_sizes[-1]
        self.n_params = self.host.n_params
        self.launcher = Launcher(self.backend.module, self.dtype)
        self.passes = Passes(self)
        self._lock = threading.Lock()
        # the engine's buffers serve one call at a time: calls from several Python threads
        # take turns (they would share one stream anyway)
        self.busy = threading.RLock()
        self.plans = Plans(self)
        self._workspaces: dict[int, Workspace] = {}
        self._uploads: list = []

    # --- parameters and arrays ------------------------------------------------------------

    def new_params(self):
        """A zeroed flat parameter buffer on the device, in the CPU engine's layout."""
        return self.xp.zeros(self.n_params, self.dtype)

    def asarray(self, a):
        """a on this engine's device, of its dtype (no copy when it is already)"""
        if self.backend.is_device_array(a) or isinstance(a, self.xp.ndarray):
            return a.astype(self.dtype, copy=False)
        return self.backend.to_device(np.asarray(a), dtype=self.dtype)

    def to_host(self, a) -> np.ndarray:
        with self.backend.on_stream():
            out = self.backend.to_host(a)
        return out

    def layers(self, params):
        """(W, b): the lists of views of params (or a gradient) per layer"""
        W, b, start = [], [], 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]):
            W.append(params[start:start + n_in * n_out].reshape(n_in, n_out))
            start += n_in * n_out
            b.append(params[start:start + n_out])
            start += n_out
        return W, b

    # --- inputs ---------------------------------------------------------------------------

    def check_X(self, X, finite: bool = True):
        if self.backend.is_device_array(X):
            return self._check_device_X(X, finite)
        return self.host.check_X(X, finite)

    def _check_device_X(self, X, finite: bool):
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (rows × features), got shape {X.shape}")
        if X.shape[1] != self.n_inputs:
            raise ValueError(f"X has {X.shape[1]} features per row, the network expects "
                             f"{self.n_inputs}")
        X = self.xp.ascontiguousarray(X, dtype=self.dtype)
        if finite and not bool(self.xp.isfinite(X).all()):
            raise ValueError("X holds NaN or infinity")
        return X

    def prepare(self, X, y, sample_weight=None) -> Batch:
        """Validated rows (the CPU engine's checks); they reach the device once, when a fit or
        an evaluation first uses them. X on the device is checked there and stays there."""
        if not self.backend.is_device_array(X):
            return self.host.prepare(X, y, sample_weight)
        X = self._check_device_X(X, True)
        y = self.to_host(y) if self.backend.is_device_array(y) else y
        host = self.host.prepare(np.zeros((X.shape[0], self.n_inputs), self.dtype), y,
                                 sample_weight)
        return host._replace(X=X)

    # a fit's rows: the CPU engine's split and class weights, over this engine's prepare
    prepare_fit = Engine.prepare_fit

    def on_device(self, batch: Batch) -> Batch:
        """batch's arrays on the device: uploaded once, the last KEEP_UPLOADS kept"""
        with self._lock:
            for held, uploaded in self._uploads:
                if held is batch or all(a is b for a, b in zip(held, batch)):
                    return uploaded
        with self.backend.on_stream():
            uploaded = Batch(*(None if a is None else self.asarray(a) if i != 1
                               else self._labels(a) for i, a in enumerate(batch)))
        with self._lock:
            self._uploads = (self._uploads + [(batch, uploaded)])[-KEEP_UPLOADS:]
        return uploaded

    def _labels(self, labels):
        if self.backend.is_device_array(labels):
            return labels.astype(np.int32, copy=False)
        return self.backend.to_device(np.asarray(labels, dtype=np.int32))

    def _workspace(self, rows: int) -> Workspace:
        """A workspace for passes over up to `rows` rows (not for training: no dropout)"""
        with self._lock:
            fits = [cap for cap in self._workspaces if cap >= rows]
            if fits:
                return self._workspaces[min(fits)]
            ws = Workspace(self, rows, training=False)
            self._workspaces = {rows: ws}        # one kept: a larger call replaces it
            return ws

    def _chunk(self, n: int) -> int:
        row_bytes = (sum(self.sizes[1:]) * 2 + 2 * max(self.sizes[1:])) * self.dtype.itemsize
        return max(1, min(n, CHUNK_ROWS, WORKSPACE_BYTES // row_bytes))

    # --- the calls ------------------------------------------------------------------------

    def forward(self, params, X):
        """The output layer's values (n × n_outputs): a device array for X on the device, a
        numpy array (copied back) for X on the host. A few ready host rows take a recorded
        plan (cdnn/cuda/predict.py): one copy each way and one graph launch."""
        with self.busy:
            out = self.plans.forward(params, X)
            if out is not None:
                return out
            on_device = self.backend.is_device_array(X)
            X = self.check_X(X)
            if hasattr(X, "nnz") or type(X).__name__ == "SparseRows":
                raise TypeError("the CUDA engine takes dense X (convert scipy.sparse with "
                                ".toarray())")
            with self.backend.on_stream():
                out = self._forward_rows(params, self.asarray(X))
                if not on_device:       # checked on the host: no wait for a device flag
                    out = self.to_host(out)
                    finite = _network.all_finite(out.reshape(-1))
                else:
                    flag = self.xp.zeros(1, np.int32)
                    self.launcher.over("find_nonfinite", out.size, out, i64(out.size), flag)
                    finite = not int(self.to_host(flag)[0])
            if not finite:
                raise ValueError("the network's output is not finite: its inputs or the "
                                 f"parameters are too large for {self.dtype} (scale the inputs)")
            return out

    def _forward_rows(self, params, X):
        n = X.shape[0]
        out = self.xp.empty((n, self.n_outputs), self.dtype)
        W, b = self.layers(params)
        chunk = self._chunk(n)
        ws = self._workspace(chunk)
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            result = self.passes.forward(ws, W, b, X[start:start + rows], rows)
            out[start:start + rows] = result
        return out

    def probabilities(self, out):
        """out (n × k) := softmax rows, or the sigmoid of each output, in place: on the device
        for a device array, on the host (the CPU engine's loop) for the copy forward gave back
        for host rows, which a kernel cannot take"""
        if not self.backend.is_device_array(out):
            return self.host.probabilities(out)
        with self.backend.on_stream():
            if self.loss == "softmax_cross_entropy":
                self.launcher.over("softmax_rows", out.shape[0], out, i64(out.shape[0]),
                                   i32(out.shape[1]))
            else:
                self.launcher.over("activation_inplace", out.size, out, i64(out.size),
                                   i32(kinds.ACTIVATIONS["sigmoid"].kernel), self.launcher.T(0))
        return out

    def evaluate(self, params, batch: Batch) -> tuple[float, float]:
        """(mean loss, weighted count of correct predictions); dropout off, no L2 term."""
        loss, correct = self._over_rows(params, batch, None)
        return loss, correct

    def loss_and_grad(self, params, batch: Batch):
        """The mean loss (plus the L2 penalty) and its gradient in params' layout (a device
        array)."""
        grad = self.xp.zeros(self.n_params, self.dtype)
        loss, _ = self._over_rows(params, batch, grad)
        return loss, grad

    def _over_rows(self, params, batch: Batch, grad):
        with self.busy:
            return self._over_rows_locked(params, batch, grad)

    def _over_rows_locked(self, params, batch: Batch, grad):
        """(loss, correct) over every row of batch, in chunks; with grad, the gradient summed
        over the chunks into grad (and the L2 term added, to loss and grad)"""
        xp, T, n = self.xp, self.dtype.type, len(batch.X)
        d = self.on_device(batch)
        total = (float(batch.weights.sum(dtype=np.float64)) if batch.weights is not None
                 else float(n)) * (1 if self.loss == "softmax_cross_entropy" else self.n_outputs)
        W, b = self.layers(params)
        dW, db = self.layers(grad) if grad is not None else (None, None)
        chunk = self._chunk(n)
        ws = self._workspace(chunk)
        sums = np.zeros(2)
        with self.backend.on_stream():
            ws.scale[...] = T(1 / total) if total > 0 else T(0)
            for start in range(0, n, chunk):
                rows, part = min(chunk, n - start), slice(start, start + chunk)
                x = d.X[part]
                out = self.passes.forward(ws, W, b, x, rows)
                self.passes.loss(ws, out, rows, *(None if a is None else a[part]
                                                  for a in (d.labels, d.targets, d.weights)))
                sums += self.to_host(ws.sums)
                if grad is not None:
                    self.passes.backward(ws, W, dW, db, x, rows, accumulate=start > 0)
            loss = float(sums[0]) * float(T(1 / total) if total > 0 else 0)
            if grad is not None and self.l2 > 0:
                self.passes.l2(ws, W, dW)
                loss += 0.5 * self.l2 * float(self.to_host(ws.penalty)[0])
        return loss, float(sums[1])

    def training_steps(self, params, optimizer, train: Batch, batch_size: int,
                       clip_norm: float, seed: int, lazy: bool = False, exchange=None):
        """The training steps of one fit over the rows of train, on the device."""
        from cdnn.cuda.steps import CudaTrainingSteps
        if lazy:
            raise ValueError("the lazy update is for sparse X, which the CUDA engine does not "
                             "take; train on device='cpu'")
        if exchange is not None:
            raise ValueError("data-parallel training (comm=) runs on device='cpu'")
        return CudaTrainingSteps(self, params, optimizer, train, batch_size, clip_norm, seed)
