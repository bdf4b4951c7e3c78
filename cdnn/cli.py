"""The `cdnn` command: `cdnn train` trains a network and prints its test accuracy.

With no arguments it trains on the UCI handwritten digits shipped in the package, so it runs
anywhere in seconds; `--data-dir DIR` trains on the MNIST IDX files found in DIR.
"""
from __future__ import annotations

import argparse
import sys
import time

import cdnn


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 256,128, got {text!r}") from None
    if any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("layer widths must be positive")
    return sizes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdnn", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a network and report its test accuracy")
    train.add_argument("--data-dir", help="a directory of MNIST IDX files (default: the "
                       "digits dataset shipped with cdnn)")
    train.add_argument("--hidden", type=_sizes, default=None,
                       help="hidden layer widths, e.g. 256,128 (default: 128 for digits, "
                       "256 for MNIST)")
    train.add_argument("--activation", default="relu", choices=sorted(cdnn.network.ACTIVATIONS))
    train.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw", "rmsprop"])
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 "
                       "for SGD, 0.001 for the others)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--epochs", type=int, default=None, help="default: 30 for digits, "
                       "3 for MNIST")
    train.add_argument("--batch-size", type=int, default=None, help="default: 32 for digits, "
                       "128 for MNIST")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2])
    return parser


def _optimizer(args):
    if args.optimizer == "sgd":
        return cdnn.SGD(lr=args.lr or 0.05, momentum=args.momentum)
    cls = {"adam": cdnn.Adam, "adamw": cdnn.AdamW, "rmsprop": cdnn.RMSprop}[args.optimizer]
    return cls(lr=args.lr or 1e-3)


def train(args) -> int:
    if args.data_dir:
        (X, y), (X_test, y_test) = cdnn.datasets.load_mnist(args.data_dir)
        name, hidden, epochs, batch = "MNIST", [256], 3, 128
    else:
        (X, y), (X_test, y_test) = cdnn.datasets.load_digits()
        name, hidden, epochs, batch = "UCI digits (shipped)", [128], 30, 32
    hidden = args.hidden or hidden
    epochs = epochs if args.epochs is None else args.epochs
    batch = args.batch_size or batch
    net = cdnn.MLP([X.shape[1], *hidden, int(y.max()) + 1], activation=args.activation,
                   dtype=args.dtype, seed=args.seed)
    print(f"{name}: {len(X)} training and {len(X_test)} test samples; network "
          f"{'-'.join(map(str, net.layer_sizes))} ({net.params.size} parameters)")
    trainer = cdnn.Trainer(net, _optimizer(args), batch_size=batch)
    start = time.perf_counter()
    trainer.fit(X, y, epochs=epochs, validation_data=(X_test, y_test), verbose=args.verbose)
    seconds = time.perf_counter() - start
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    print(f"test accuracy {accuracy:.4f} after {epochs} epochs in {seconds:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"train": train}[args.command](args)
    except (ValueError, TypeError, OSError) as e:
        print(f"cdnn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
