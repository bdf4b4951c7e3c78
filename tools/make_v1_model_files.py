"""Writes tests/data/v1_<optimizer>.safetensors and v1_<optimizer>_next.npz: model files in
format_version 1 (optimizer state as optimizer.state1/state2), written by cdnn at 3f99230, and
the parameters and state after one more training step, as that version computed them.

tests/test_io.py loads them with today's cdnn (state named m, v, momentum, square_avg) and
checks that training resumes exactly where the old version would have gone. Run from the
repository root with cdnn 3f99230 installed; the files are committed, so it needs no rerun."""
import numpy as np

import cdnn

OPTIMIZERS = {"sgd": lambda: cdnn.SGD(0.05, momentum=0.9), "adam": lambda: cdnn.Adam(0.01),
              "rmsprop": lambda: cdnn.RMSprop(0.01, momentum=0.5)}


def main():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 4))
    y = rng.integers(0, 3, 16)
    for name, make in OPTIMIZERS.items():
        net = cdnn.MLP([4, 5, 3], activation="tanh", dtype="float64", seed=1)
        opt = make()
        cdnn.Trainer(net, opt, batch_size=8).fit(X, y, epochs=2, shuffle=False, verbose=0)
        net.save(f"tests/data/v1_{name}.safetensors", opt)
        cdnn.Trainer(net, opt, batch_size=8).fit(X[:8], y[:8], epochs=1, shuffle=False,
                                                  verbose=0)
        np.savez(f"tests/data/v1_{name}_next.npz", X=X[:8], y=y[:8], params=net.params,
                 state1=opt.state[0], state2=opt.state[1])


if __name__ == "__main__":
    main()
