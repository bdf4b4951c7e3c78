"""A fit's training steps on the device: src/step.pxd's phases as launches, a run of steps as
one CUDA graph.

    gather    the batch's rows by index (the fit's rows were uploaded once)
    forward   every layer: cuBLAS GEMM + fused bias/activation (+ dropout)
    loss      loss and output delta, fused; the loss's sums
    backward  every layer: dW = aᵀ·δ (cuBLAS), db fused with the activation's gradient, δ below
    clip      global-norm clipping, when asked
    update    the optimizer over the flat buffer, one kernel

What changes from step to step of a run (its learning rate, its step number, its rows) is read
by the kernels from device buffers: lrs[s], step0[0] + s + 1 and order[s·batch:], so the run's
launches are recorded once per (steps, rows of the last batch) and replayed. A failure (a loss,
a norm or an update that is not finite) sets a status word on the device: from then on the
updates do nothing, and the host reads which step failed when the run is over. A failed update
is undone from the copy of the parameters and state taken before the run, and the good steps
replayed, as on the CPU (cdnn/_engine.py's TrainingSteps).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict

import numpy as np

from cdnn import kinds
from cdnn._native import _network
from cdnn.cuda import backend as backends
from cdnn.cuda.passes import Launcher, Workspace, i32, i64, f64

KEEP_GRAPHS = 4         # recorded runs kept: a fit needs two (its runs, an epoch's last)
UPDATE_NOT_FINITE = 4


class CudaTrainingSteps:
    def __init__(self, engine, params, optimizer, train, batch_size: int, clip_norm: float,
                 seed: int):
        xp = engine.xp
        self.e, self.params, self.optimizer = engine, params, optimizer
        self.batch_size, self.clip_norm, self.seed = batch_size, clip_norm, seed
        self.config = optimizer.kernel_config()
        self.state = _device_state(engine.backend, optimizer, params)
        self._state_seen = optimizer.state
        self.data = engine.on_device(train)
        self.n_rows = len(train.X)
        self.grad = xp.zeros_like(params)
        self.saved = [xp.empty_like(a) for a in (params, *self.state.values())]
        self.ws = Workspace(engine, batch_size, training=True)
        self.step0 = xp.zeros(1, np.int64)
        self.status = xp.zeros(2, np.int32)
        self.gscale = xp.ones(1, np.float64)
        self.sumsq = xp.zeros(1, np.float64)
        self.room = 0           # steps the run buffers hold
        self.graphs: OrderedDict = OrderedDict()

    def _room_for(self, n_steps: int):
        """Run buffers for n_steps steps (recorded graphs read them: a new size drops those)"""
        if n_steps <= self.room:
            return
        xp, self.room = self.e.xp, max(n_steps, 2 * self.room)
        self.lrs = xp.zeros(self.room, np.float64)
        self.order = xp.zeros(self.room * self.batch_size, np.int64)
        self.losses = xp.zeros(self.room, np.float64)
        self.corrects = xp.zeros(self.room, np.float64)
        self.graphs.clear()

    def run(self, lrs, order, losses, corrects, factors=None) -> tuple[int, str | None]:
        """Run len(lrs) steps over the rows in order; return how many completed and, when a
        step failed, why: the parameters are then those after the last completed step."""
        if factors is not None:
            raise ValueError("data-parallel training (comm=) runs on device='cpu'")
        n_steps, order = len(lrs), np.ascontiguousarray(order, dtype=np.int64)
        if order.size and not (0 <= order.min() and order.max() < self.n_rows):
            raise ValueError("order holds a row index out of range")
        if not (n_steps - 1) * self.batch_size < len(order) <= n_steps * self.batch_size:
            raise ValueError("order and lrs disagree on the number of steps")
        self._check_state()
        be, xp = self.e.backend, self.e.xp
        with be.on_stream():
            for saved, array in zip(self.saved, (self.params, *self.state.values())):
                xp.copyto(saved, array)
            done, status = self._call(np.asarray(lrs, np.float64), order)
            losses[:n_steps] = self.e.to_host(self.losses[:n_steps])
            corrects[:n_steps] = self.e.to_host(self.corrects[:n_steps])
            if status == UPDATE_NOT_FINITE:         # undo the failed update, replay the good
                for saved, array in zip(self.saved, (self.params, *self.state.values())):
                    xp.copyto(array, saved)
                if done:
                    self._call(np.asarray(lrs[:done], np.float64),
                               order[:done * self.batch_size])
                    losses[:done] = self.e.to_host(self.losses[:done])
                    corrects[:done] = self.e.to_host(self.corrects[:done])
        self.optimizer.steps += done
        return done, (_network.STEP_FAILURES[status] if status else None)

    def _check_state(self):
        """A callback may have reset the optimizer (zeroed in place) or given it new state"""
        if self.optimizer.state is not self._state_seen:
            self.state = _device_state(self.e.backend, self.optimizer, self.params)
            self.graphs.clear()
        self._state_seen = self.optimizer.state
        self.config = self.optimizer.kernel_config()     # hyper-parameters set between runs

    def _call(self, lrs: np.ndarray, order: np.ndarray) -> tuple[int, int]:
        """One run on the device: its inputs uploaded, its graph replayed; (done, status)"""
        n_steps, last = len(lrs), len(order) - (len(lrs) - 1) * self.batch_size
        self._room_for(n_steps)
        self.e.backend.upload(self.lrs[:n_steps], lrs)
        self.e.backend.upload(self.order[:len(order)], order)
        self.step0[...] = self.optimizer.steps
        self.status[...] = 0
        key = (n_steps, last, _hyper_key(self.config))
        replay = self.graphs.pop(key, None)
        if replay is None:
            replay = self.e.backend.capture(lambda: self._launch_run(n_steps, last))
        self.graphs[key] = replay
        while len(self.graphs) > KEEP_GRAPHS:
            self.graphs.popitem(last=False)
        replay()
        status = self.e.to_host(self.status)
        return (n_steps, 0) if status[0] == 0 else (int(status[1]), int(status[0]))

    def _launch_run(self, n_steps: int, last: int):
        for s in range(n_steps):
            self._launch_step(s, self.batch_size if s < n_steps - 1 else last)

    def _launch_step(self, s: int, rows: int):
        """Step s of the run, on rows order[s·batch : s·batch + rows]"""
        e, ws, p, k = self.e, self.ws, self.e.passes, self.e.launcher
        idx, d = self.order[s * self.batch_size:s * self.batch_size + rows], self.data
        x = ws.x[:rows]
        k.over("gather_rows", rows * e.n_inputs, x, d.X, idx, i64(rows), i32(e.n_inputs))
        labels, targets, weights = self._gather(idx, rows)
        p.loss_scale(ws, weights, rows)
        W, b = e.layers(self.params)
        dW, db = e.layers(self.grad)
        out = p.forward(ws, W, b, x, rows, True, self.seed, self.step0, s)
        p.loss(ws, out, rows, labels, targets, weights)
        p.backward(ws, W, dW, db, x, rows, True, self.seed, self.step0, s)
        if e.l2 > 0:
            p.l2(ws, W, dW)
        k.one("finish_loss", ws.sums, ws.scale, ws.penalty if e.l2 > 0 else np.uint64(0),
              f64(e.l2), self.losses, self.corrects, i32(s), self.status, self.gscale)
        if self.clip_norm > 0:
            p.sum_of_squares(ws, self.grad, self.sumsq)
            k.one("clip_scale", self.sumsq, f64(self.clip_norm), self.gscale, i32(s),
                  self.status)
        self._update(s)

    def _gather(self, idx, rows: int):
        e, ws, d, k = self.e, self.ws, self.data, self.e.launcher
        labels = targets = weights = None
        if d.labels is not None:
            labels = ws.labels[:rows]
            k.over("gather_labels", rows, labels, d.labels, idx, i64(rows))
        if d.targets is not None:
            targets = ws.targets[:rows]
            k.over("gather_rows", rows * e.n_outputs, targets, d.targets, idx, i64(rows),
                   i32(e.n_outputs))
        if d.weights is not None:
            weights = ws.weights[:rows]
            k.over("gather_rows", rows, weights, d.weights, idx, i64(rows), i32(1))
        return labels, targets, weights

    def _update(self, s: int):
        launch_update(self.e.launcher, self.config, self.params, self.grad, self.state,
                      self.lrs, self.step0, s, self.gscale, self.status)


def launch_update(k, c: dict, p, g, state, lrs, step0, s: int, gscale, status):
    """The optimizer's update kernel (config c) over the flat buffer p for step s of a run:
    its learning rate lrs[s], its number step0[0] + s + 1, the gradient g·gscale[0]"""
    T, n = k.T, p.size          # state: the buffers by cdnn/kinds.py's names
    common = (i64(n), lrs)
    if c["kernel"] == kinds.OPTIMIZERS["sgd"].kernel:
        k.over("sgd_update", n, p, g, state["momentum"], *common, i32(s), gscale, status,
               T(c["momentum"]), T(c["weight_decay"]), i32(c["nesterov"]))
    elif c["kernel"] == kinds.OPTIMIZERS["adam"].kernel:
        beta1, beta2 = c["betas"]
        k.over("adam_update", n, p, g, state["m"], state["v"], *common, step0, i32(s), gscale,
               status, f64(beta1), f64(beta2), f64(c["eps"]), T(c["weight_decay"]),
               i32(c.get("eps_inside", False)), i32(c["decoupled"]))
    else:
        k.over("rmsprop_update", n, p, g, state["square_avg"], state["momentum"], *common,
               i32(s), gscale, status, T(c["alpha"]), T(c["eps"]), T(c["momentum"]), T(c["weight_decay"]))


_launchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def optimizer_step(optimizer, params, grad, lr: float):
    """Optimizer.step for device arrays (net.params and net.loss_and_grad's gradient on a CUDA
    network): the update kernel a fit runs, once, on the current backend's stream"""
    be = backends.current()
    for name, array in (("params", params), ("grad", grad)):
        if not be.is_device_array(array):
            raise TypeError(f"{name} must be a device array like the other (net.params of a "
                            f"CUDA network, and the gradient its loss_and_grad gives), got "
                            f"{type(array).__name__}")
    if params.dtype not in (np.float32, np.float64) or params.ndim != 1 \
            or not params.flags.c_contiguous:
        raise ValueError(f"params must be a 1-D contiguous float32 or float64 array "
                         f"(net.params), got {params.dtype} of shape {params.shape}")
    if grad.shape != params.shape or grad.dtype != params.dtype or not grad.flags.c_contiguous:
        raise ValueError(f"grad must have the shape and dtype of params ({params.shape} "
                         f"{params.dtype}), got {grad.shape} {grad.dtype}")
    xp = be.xp
    with be.on_stream():
        if not bool(xp.isfinite(grad).all()):
            raise ValueError("grad holds a non-finite value (NaN or infinity); the step would "
                             "spoil every parameter")
        config = optimizer.kernel_config()
        state = _device_state(be, optimizer, params)
        k = _launchers.setdefault(be, {}).get(params.dtype) or Launcher(be.module, params.dtype)
        _launchers[be][params.dtype] = k
        optimizer.steps += 1
        lrs = be.to_device(np.array([lr], np.float64))
        step0 = be.to_device(np.array([optimizer.steps - 1], np.int64))
        launch_update(k, config, params, grad, state, lrs, step0, 0,
                      xp.ones(1, np.float64), xp.zeros(2, np.int32))


def _hyper_key(config: dict) -> tuple:
    """The hyper-parameters a recorded run has baked in (a change needs a new recording)"""
    return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in config.items()))


def _device_state(backend, optimizer, params):
    """The optimizer's state buffers on the device (state saved on the host, or made for a
    CPU network, is moved there once)"""
    state = optimizer.state_for(params)
    if not all(backend.is_device_array(a) for a in state.values()):
        optimizer.state = {name: backend.to_device(np.asarray(a), dtype=params.dtype)
                           for name, a in state.items()}
    return optimizer.state
