"""The contenders, written the way a competent user writes each framework.

Each class imports its framework in __init__, which runs only inside that contender's worker
process: the parent and the other workers never load it. The cdnn contender uses cdnn's public
API only. `estimators()` gives the scikit-learn style classes the small jobs run (cdnn's drop-in
and scikit-learn's own): the same code then drives both.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import numpy as np

from .workloads import LR, MOMENTUM

WARMUP_BATCHES = 16  # untimed steps on a throwaway model before every timed run


def _he_uniform(rng, fan_in, fan_out):
    bound = np.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(np.float32)


class Contender:
    """What every contender offers the worker: build a model, warm up, train an epoch, predict."""

    name = ""

    def warmup(self, sizes, batch, X, y):
        """Untimed: train a throwaway model for WARMUP_BATCHES steps; return compile seconds."""
        rows = WARMUP_BATCHES * batch
        m = self.build(sizes, batch, 12345, X[:rows], y[:rows])
        self.train_epoch(m)
        return None

    def estimators(self):
        """The module holding MLPClassifier and MLPRegressor, for the small jobs."""
        raise ImportError(f"{self.name} has no scikit-learn style estimators")


def cdnn_network(cdnn, sizes, seed, matmul_precision="float32"):
    """The network the cdnn contender trains and predicts with (and ONNX Runtime runs)."""
    return cdnn.MLP(sizes, activation="relu", loss="softmax_cross_entropy", dtype="float32",
                    seed=seed, matmul_precision=matmul_precision)


def usable_cores():
    """The threads cdnn uses by default: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not on Linux
        return os.cpu_count() or 1


class CdnnContender(Contender):
    name = "cdnn"
    matmul_precision = "float32"

    def __init__(self):
        import cdnn

        self.cdnn = cdnn

    def build(self, sizes, batch, seed, X, y):
        cdnn = self.cdnn
        net = cdnn_network(cdnn, sizes, seed, self.matmul_precision)
        trainer = cdnn.Trainer(net, cdnn.SGD(lr=LR, momentum=MOMENTUM), batch_size=batch, seed=seed)
        return SimpleNamespace(net=net, trainer=trainer, X=X, y=y)

    def train_epoch(self, m):
        m.trainer.fit(m.X, m.y, epochs=1, shuffle=True, verbose=0)

    def predict(self, m, X):
        return np.asarray(m.net.predict(X))

    def predictor(self, m):
        return m.net.predict, contextlib.nullcontext

    def estimators(self):
        import cdnn.sklearn     # needs scikit-learn: an ImportError skips the small jobs

        return cdnn.sklearn


class CdnnOpenBLASContender(CdnnContender):
    """cdnn as it runs without the [onednn] extra: every float32 product through OpenBLAS"""

    name = "cdnn-openblas"

    def __init__(self):
        os.environ["CDNN_ONEDNN_SGEMM"] = "0"      # read when the first network is built
        super().__init__()


class CdnnBF16Contender(CdnnContender):
    """cdnn with matmul_precision="bfloat16": oneDNN's bf16 GEMM on the CPU's matrix engine.
    Without the [onednn] extra, or on a CPU without AMX-BF16/AVX512-BF16, its worker fails
    to start and the report says why."""

    name = "cdnn-bf16"
    matmul_precision = "bfloat16"

    def __init__(self):
        super().__init__()
        from cdnn import _onednn

        self.matmul_engine = _onednn.bf16_products().engine


class TorchContender(Contender):
    name = "torch"
    autocast = False    # TorchBF16Contender: every step and prediction under bf16 autocast

    def __init__(self):
        import torch

        self.torch = torch

    def build(self, sizes, batch, seed, X, y):
        torch, nn = self.torch, self.torch.nn
        torch.manual_seed(seed)
        # The same recipe as the others: He-uniform weights and zero biases (torch's default,
        # U(±1/√fan_in) for both, trains to another one-epoch accuracy)
        rng, layers = np.random.default_rng(seed), []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(_he_uniform(rng, fan_in, fan_out).T))
                linear.bias.zero_()
            layers += [linear, nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return SimpleNamespace(model=model, opt=opt, loss_fn=nn.CrossEntropyLoss(), batch=batch,
                               X=torch.from_numpy(X), y=torch.from_numpy(y),
                               gen=torch.Generator().manual_seed(seed))

    def train_epoch(self, m):
        model, opt, loss_fn, X, y, batch = m.model, m.opt, m.loss_fn, m.X, m.y, m.batch
        model.train()
        perm = self.torch.randperm(X.shape[0], generator=m.gen)
        for start in range(0, X.shape[0], batch):
            idx = perm[start:start + batch]
            opt.zero_grad(set_to_none=True)
            with self._precision():
                loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()

    def _precision(self):
        """PyTorch's own recipe for bf16 on a CPU: autocast around the forward pass and loss
        (Linear runs in bf16 through oneDNN, the weights stay float32)"""
        if not self.autocast:
            return contextlib.nullcontext()
        return self.torch.autocast("cpu", dtype=self.torch.bfloat16)

    def predict(self, m, X):
        m.model.eval()
        with self.torch.inference_mode(), self._precision():
            return m.model(self.torch.from_numpy(X)).argmax(1).numpy()

    def predictor(self, m):
        model, from_numpy = m.model, self.torch.from_numpy
        model.eval()

        def predict(x):
            return model(from_numpy(x)).argmax(1)

        @contextlib.contextmanager
        def context():
            with self.torch.inference_mode(), self._precision():
                yield

        return predict, context


class TorchBF16Contender(TorchContender):
    name = "torch-bf16"
    autocast = True


class JaxContender(Contender):
    name = "jax"

    def __init__(self):
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

        def forward(params, x):
            for W, b in params[:-1]:
                x = jax.nn.relu(x @ W + b)
            W, b = params[-1]
            return x @ W + b

        def loss_fn(params, xb, yb):
            logp = jax.nn.log_softmax(forward(params, xb))
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

        def step(params, vel, X, y, idx):
            # gather, forward, loss, grad and the momentum update: one compiled call
            grads = jax.grad(loss_fn)(params, X[idx], y[idx])
            vel = jax.tree.map(lambda v, g: MOMENTUM * v + g, vel, grads)
            params = jax.tree.map(lambda p, v: p - LR * v, params, vel)
            return params, vel

        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.predict_fn = jax.jit(lambda params, x: jnp.argmax(forward(params, x), axis=1))

    def build(self, sizes, batch, seed, X, y):
        jax, jnp = self.jax, self.jnp
        rng = np.random.default_rng(seed)
        params = [(jnp.asarray(_he_uniform(rng, a, b)), jnp.zeros(b, jnp.float32))
                  for a, b in zip(sizes[:-1], sizes[1:])]
        vel = jax.tree.map(jnp.zeros_like, params)
        return SimpleNamespace(params=params, vel=vel, batch=batch, rng=rng,
                               X=jax.device_put(X), y=jax.device_put(y.astype(np.int32)))

    def warmup(self, sizes, batch, X, y):
        """Compile the step for the full-batch shape and the epoch's tail shape; return seconds.
        The whole X is an argument of the step, so the warm-up model must hold all of it."""
        m = self.build(sizes, batch, 12345, X, y)
        seconds = 0.0
        for rows in sorted({batch, X.shape[0] % batch} - {0}, reverse=True):
            idx = np.arange(rows, dtype=np.int32)
            t0 = time.perf_counter()
            m.params, m.vel = self.step(m.params, m.vel, m.X, m.y, idx)
            self.jax.block_until_ready(m.params)
            seconds += time.perf_counter() - t0
        return seconds

    def train_epoch(self, m):
        n, batch, step = m.X.shape[0], m.batch, self.step
        perm = m.rng.permutation(n).astype(np.int32)
        params, vel = m.params, m.vel
        for start in range(0, n, batch):
            params, vel = step(params, vel, m.X, m.y, perm[start:start + batch])
        self.jax.block_until_ready(params)
        m.params, m.vel = params, vel

    def predict(self, m, X):
        return np.asarray(self.predict_fn(m.params, X))

    def predictor(self, m):
        params, predict_fn = m.params, self.predict_fn

        def predict(x):
            return predict_fn(params, x).block_until_ready()

        return predict, contextlib.nullcontext


class SklearnContender(Contender):
    name = "sklearn"

    def __init__(self):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.MLPClassifier, self.ConvergenceWarning = MLPClassifier, ConvergenceWarning

    def build(self, sizes, batch, seed, X, y):
        clf = self.MLPClassifier(
            hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu", solver="sgd",
            learning_rate="constant", learning_rate_init=LR, momentum=MOMENTUM,
            nesterovs_momentum=False, batch_size=batch, alpha=0.0, max_iter=1, shuffle=True,
            tol=0.0, n_iter_no_change=np.inf, early_stopping=False, random_state=seed)
        return SimpleNamespace(clf=clf, X=X, y=y, fitted=False)

    def train_epoch(self, m):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.ConvergenceWarning)
            if not m.fitted:  # first epoch: fit with max_iter=1
                m.clf.fit(m.X, m.y)
                m.fitted = True
            else:  # later epochs (TTA): partial_fit keeps the momentum buffers
                m.clf.partial_fit(m.X, m.y)

    def predict(self, m, X):
        return m.clf.predict(X)

    def predictor(self, m):
        if not m.fitted:  # MLPClassifier cannot predict before it has seen the classes
            self.train_epoch(m)
        return m.clf.predict, contextlib.nullcontext

    def estimators(self):
        import sklearn.neural_network

        return sklearn.neural_network


# Exports cdnn's network for (sizes, seed) with to_onnx and writes the model to stdout. It runs in
# a child process, so the ONNX Runtime worker never loads cdnn (its OpenMP runtime).
_EXPORT = """import sys
sys.path.insert(0, {parent!r})
import cdnn
from cdnn.bench.contenders import cdnn_network
sys.stdout.buffer.write(cdnn_network(cdnn, {sizes!r}, {seed!r}).to_onnx().SerializeToString())
"""


class OrtContender(Contender):
    """ONNX Runtime on cdnn's own network (the same weights, exported with cdnn's to_onnx), at
    cdnn's default thread count, sequential execution: what a deployment of the model runs."""

    name = "ort"

    def __init__(self):
        import onnxruntime

        self.ort = onnxruntime
        self.threads = usable_cores()

    def build(self, sizes, batch, seed, X, y):
        parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = _EXPORT.format(parent=parent, sizes=list(sizes), seed=seed)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=600)
        if done.returncode:
            raise RuntimeError("exporting cdnn's network to ONNX failed: "
                               + done.stderr.decode(errors="replace")[-2000:])
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
        session = self.ort.InferenceSession(done.stdout, options, providers=["CPUExecutionProvider"])
        return SimpleNamespace(session=session, input=session.get_inputs()[0].name)

    def train_epoch(self, m):
        raise NotImplementedError("ONNX Runtime only predicts")

    def predict(self, m, X):
        return m.session.run(None, {m.input: X})[0].argmax(1)

    def predictor(self, m):
        run, name = m.session.run, m.input

        def predict(x):     # probabilities, then the class, as cdnn's and torch's predict
            return run(None, {name: x})[0].argmax(1)

        return predict, contextlib.nullcontext


CONTENDER_CLASSES = {c.name: c for c in (CdnnContender, CdnnOpenBLASContender,
                                           CdnnBF16Contender, TorchContender,
                                           TorchBF16Contender, JaxContender, SklearnContender,
                                           OrtContender)}
