"""Plain numpy references for every kernel: slow, obviously correct, float64 throughout."""
import numpy as np
from scipy.special import erf, log_softmax, softmax, xlogy


def activate(z, name, slope=0.01):
    return {
        "identity": lambda: z,
        "relu": lambda: np.maximum(z, 0),
        "leaky_relu": lambda: np.where(z > 0, z, slope * z),
        "sigmoid": lambda: 1 / (1 + np.exp(-z)),
        "tanh": lambda: np.tanh(z),
        "gelu": lambda: 0.5 * z * (1 + erf(z / np.sqrt(2))),
    }[name]()


def derivative(z, name, slope=0.01):
    s = 1 / (1 + np.exp(-z))
    return {
        "identity": lambda: np.ones_like(z),
        "relu": lambda: (z > 0).astype(float),
        "leaky_relu": lambda: np.where(z > 0, 1.0, slope),
        "sigmoid": lambda: s * (1 - s),
        "tanh": lambda: 1 - np.tanh(z) ** 2,
        "gelu": lambda: 0.5 * (1 + erf(z / np.sqrt(2))) + z * np.exp(-z * z / 2) / np.sqrt(2 * np.pi),
    }[name]()


def loss_and_delta(name, z, targets, weights):
    """(Σ w·ℓ / normaliser, dL/dz) with targets as dense rows; the mean over rows (softmax) or
    over all elements (sigmoid, MSE, Poisson), weighted by the rows' weights."""
    n, k = z.shape
    w = np.ones(n) if weights is None else weights
    if name == "softmax_cross_entropy":
        rows = -(targets * log_softmax(z, axis=1)).sum(axis=1)
        grad = softmax(z, axis=1) * targets.sum(axis=1, keepdims=True) - targets
        norm = w.sum()
    elif name == "sigmoid_cross_entropy":
        p = 1 / (1 + np.exp(-z))
        rows = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(axis=1)
        grad = p - targets
        norm = w.sum() * k
    elif name == "poisson":     # half the Poisson deviance of the mean exp(z), as scikit-learn's
        mu = np.exp(z)
        rows = (xlogy(targets, targets / mu) - targets + mu).sum(axis=1)
        grad = mu - targets
        norm = w.sum() * k
    else:
        rows = ((z - targets) ** 2).sum(axis=1)
        grad = 2 * (z - targets)
        norm = w.sum() * k
    return (w * rows).sum() / norm, w[:, None] * grad / norm


def forward(params_W, params_b, X, activations):
    """Every layer's (z, a), the output layer last."""
    out, a = [], X
    for W, b, act in zip(params_W, params_b, activations):
        z = a @ W + b
        a = activate(z, act)
        out.append((z, a))
    return out


def sgd(p, g, buf, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    g = g + weight_decay * p
    if momentum:
        buf[...] = momentum * buf + g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g


def adam(p, g, m, v, lr, step, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
         decoupled=False, eps_inside=False):
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m[...] = betas[0] * m + (1 - betas[0]) * g
    v[...] = betas[1] * v + (1 - betas[1]) * g * g
    if eps_inside:      # scikit-learn's form: the bias corrections folded into the rate
        lr_t = lr * np.sqrt(1 - betas[1] ** step) / (1 - betas[0] ** step)
        return p - lr_t * m / (np.sqrt(v) + eps)
    m_hat = m / (1 - betas[0] ** step)
    v_hat = v / (1 - betas[1] ** step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def rmsprop(p, g, sq, buf, lr, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0):
    g = g + weight_decay * p
    sq[...] = alpha * sq + (1 - alpha) * g * g
    step = g / (np.sqrt(sq) + eps)
    if momentum:
        buf[...] = momentum * buf + step
        step = buf
    return p - lr * step
