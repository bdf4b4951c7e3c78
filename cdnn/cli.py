"""The `cdnn` command: train, evaluate and run networks from the shell.

    cdnn train [--dataset digits|mnist|fashion-mnist] [--data-dir DIR] [--save model.safetensors]
    cdnn evaluate model.safetensors [--dataset …] [--data-dir DIR]
    cdnn predict model.safetensors input.npy|input.csv [-o out.npy|out.csv] [--proba]
    cdnn export model.safetensors model.onnx   (needs pip install 'cdnn[onnx]')
    cdnn bench [--quick …]                  (the benchmark suite: cdnn bench --help)

With no data option `train` uses the UCI handwritten digits shipped in the package, so it runs
anywhere in seconds; `--data-dir DIR` reads MNIST-format IDX files from DIR; `--dataset mnist`
or `fashion-mnist` without --data-dir downloads them (once) into the cache directory.
A bad argument or file ends the command with one line on stderr and a non-zero exit status
(2 for a bad argument, 1 for anything else); a closed output pipe (`| head`) ends it quietly
with the status of a process killed by SIGPIPE (141).
"""
from __future__ import annotations

import argparse
import builtins
import os
import signal
import stat
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import cdnn
from cdnn import kinds
from cdnn._validation import MAX_WIDTH, check_labels, check_real
from cdnn.io import check_writable, open_atomically

# per data source: name, loader(path or None), default hidden widths, epochs, batch size
DATASETS = {
    "digits": ("UCI digits (shipped)", None, [128], 30, 32),
    "mnist": ("MNIST", cdnn.datasets.load_mnist, [256], 3, 128),
    "fashion-mnist": ("Fashion-MNIST", cdnn.datasets.load_fashion_mnist, [256], 3, 128),
}
OPTIMIZERS = {name: cdnn.optim.class_of(kind) for name, kind in kinds.OPTIMIZERS.items()}
ARRAY_FORMATS = (".npy", ".csv")
INPUT_FORMATS = ARRAY_FORMATS + (".npz",)     # .npz: a scipy.sparse.save_npz matrix
# the share of --data's rows (the last ones) held out as its test set
TEST_FRACTION = 0.2


class BadArgument(ValueError):
    """A flag's value that the library refuses (--lr 0, --dropout 1.5): status 2, as argparse
    gives for a value it refuses itself."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage dump) that point to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 256,128, got {text!r}") from None
    if not all(1 <= s <= MAX_WIDTH for s in sizes):
        raise argparse.ArgumentTypeError(f"layer widths must be in 1..{MAX_WIDTH}, got {text}")
    return sizes


def _integer(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _file_path(text: str) -> str:
    if not text:    # "" is no file: --save '' would otherwise save nothing and say nothing
        raise argparse.ArgumentTypeError("expected a file path, got an empty string")
    return text


def _add_device_option(parser: argparse.ArgumentParser):
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: an NVIDIA GPU (needs pip install 'cdnn[cuda12]' or "
                        "'cdnn[cuda13]')")


def _add_data_options(parser: argparse.ArgumentParser):
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                        help="digits (shipped, the default), mnist or fashion-mnist "
                        "(downloaded to the cache unless --data-dir is given)")
    parser.add_argument("--data-dir", help="a directory of MNIST-format IDX files (raw or "
                        ".gz); implies --dataset mnist unless another is named")


def _add_train_options(train):
    """cdnn train's options: the data, the network, the optimizer and the run."""
    _add_data_options(train)
    train.add_argument("--data", nargs=2, metavar=("X", "Y"), help="train on your own data "
                       "instead: X as .npy, .csv or .npz (a sparse matrix from "
                       "scipy.sparse.save_npz), Y the class indices as .npy or .csv; the last "
                       f"{TEST_FRACTION:.0%}% of the rows are the test set")
    train.add_argument("--hidden", type=_sizes, default=None,
                       help="hidden layer widths, e.g. 256,128 (default: 128 for digits, "
                       "256 for MNIST)")
    train.add_argument("--activation", default="relu", choices=sorted(kinds.ACTIVATIONS))
    train.add_argument("--dropout", type=float, default=0.0,
                       help="dropout rate after each hidden layer (default 0)")
    train.add_argument("--optimizer", default="sgd", choices=sorted(OPTIMIZERS))
    train.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 "
                       "for SGD, 0.001 for the others)")
    train.add_argument("--momentum", type=float, default=None,
                       help="momentum of SGD and RMSprop (default 0.9 for SGD, 0 for RMSprop)")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    train.add_argument("--weight-decay", type=float, default=None,
                       help="weight decay (default 0; 0.01 for AdamW)")
    train.add_argument("--clip-norm", type=float, default=None, metavar="NORM",
                       help="scale each step's gradient to at most this L2 norm (a cure for "
                       "divergence)")
    train.add_argument("--epochs", type=_integer(0), default=None,
                       help="default: 30 for digits, 3 for MNIST")
    train.add_argument("--batch-size", type=_integer(1), default=None,
                       help="default: 32 for digits, 128 for MNIST")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    _add_device_option(train)
    train.add_argument("--matmul-precision", default="float32",
                       choices=["float32", "bfloat16", "tensorfloat32"],
                       help="bfloat16: bf16 matrix products on the CPU's AMX or AVX512-BF16 "
                       "units (pip install 'cdnn[onednn]') or a GPU's tensor cores; "
                       "tensorfloat32: tf32 products (--device cuda only)")
    train.add_argument("--seed", type=_integer(0), default=0)
    train.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                       help="0 silent, 1 a progress bar (one line per epoch when stderr is not "
                       "a terminal), 2 one line per epoch")
    train.add_argument("--save", metavar="PATH", type=_file_path, help="write the trained "
                       "model here (safetensors; read it back with cdnn.load)")
    train.add_argument("--distributed", action="store_true", help="data-parallel over MPI: "
                       "launch as mpiexec -n N cdnn train --distributed …; --batch-size is "
                       "the global batch, rank 0 prints and saves (needs cdnn[mpi])")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cdnn", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cdnn {cdnn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a network and report its test accuracy",
                                description="Train an MLP classifier and report its test "
                                "accuracy; --save writes it as a safetensors file.")
    _add_train_options(train)

    evaluate = commands.add_parser("evaluate", help="a saved model's loss and accuracy on a "
                                   "test set", description="Print a saved model's loss and "
                                   "accuracy on the test split of a dataset.")
    evaluate.add_argument("model", help="a model file written by `cdnn train --save`")
    _add_data_options(evaluate)
    _add_device_option(evaluate)

    predict = commands.add_parser("predict", help="run a saved model on an array of inputs",
                                  description="Predict one row per input row. INPUT is .npy "
                                  "or .csv (comma-separated, one sample per line).")
    predict.add_argument("model", help="a model file written by `cdnn train --save`")
    predict.add_argument("input", help="the inputs: .npy, .csv or .npz (a sparse matrix "
                         "from scipy.sparse.save_npz), one sample per row")
    predict.add_argument("-o", "--output", type=_file_path, help="where to write the "
                         "predictions (.npy or .csv); CSV on stdout when omitted")
    predict.add_argument("--proba", action="store_true",
                         help="class probabilities instead of class indices")
    _add_device_option(predict)

    export = commands.add_parser("export", help="convert a saved model to ONNX",
                                 description="Write a saved model as an ONNX file (opset 17; "
                                 "its first output is predict_proba's answer, or predict's for "
                                 "regression). Needs pip install 'cdnn[onnx]'.")
    export.add_argument("model", help="a model file written by `cdnn train --save`")
    export.add_argument("output", type=_file_path,
                        help="where to write the ONNX model, e.g. model.onnx")

    commands.add_parser("bench", help="benchmark cdnn against PyTorch, JAX and scikit-learn "
                        "(cdnn bench --help)", add_help=False)
    parser.commands = commands.choices   # name -> subparser, for errors found after parsing
    return parser


# --- data --------------------------------------------------------------------------------

def _dataset_key(args) -> str:
    return args.dataset or ("mnist" if args.data_dir else "digits")


def _load_dataset(args) -> tuple[str, tuple, tuple]:
    """The data source the options name: (name, (X, y), (X_test, y_test))."""
    name, loader, *_ = DATASETS[_dataset_key(args)]
    if loader is None:
        if args.data_dir:
            raise ValueError("--data-dir reads MNIST-format files; the digits dataset is "
                             "shipped (give --dataset mnist or fashion-mnist with it)")
        return name, *cdnn.datasets.load_digits()
    try:
        return name, *loader(args.data_dir)
    except cdnn.datasets.DownloadError as e:
        raise OSError(f"could not download {name} ({e.errors[0]}); to work offline give "
                      f"--data-dir DIR, a folder that holds its four IDX files") from None


def _load_files(x_path: str, y_path: str) -> tuple[str, tuple, tuple]:
    """--data: (name, (X, y), (X_test, y_test)), the last TEST_FRACTION of the rows for test."""
    X, y = _read_array(x_path), _read_labels(y_path)
    if X.shape[0] != len(y) or len(y) < 2:
        raise ValueError(f"{x_path} has {X.shape[0]} rows, {y_path} {len(y)} labels: they "
                         f"must agree (and be at least 2)")
    try:        # the library's check, so strings and inf are named as there
        y = check_labels(y, None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{y_path}: class labels must be integers 0, 1, …: {e}") from None
    cut = len(y) - max(1, round(len(y) * TEST_FRACTION))
    if hasattr(X, "tocsr"):     # a sparse matrix: its size and structure checked before scipy
        from cdnn._sparse import check_room, check_structure    # converts or slices it
        check_room(X, X.dtype)
        check_structure(X)
    rows = X.tocsr() if hasattr(X, "tocsr") else X
    return Path(x_path).name, (rows[:cut], y[:cut]), (rows[cut:], y[cut:])


def _read_labels(path: str) -> np.ndarray:
    """One class index per row: a 1-D array, or one column (a CSV of one label per line). A
    table of several columns is refused, not flattened into more labels than rows."""
    y = _read_array(path, one_row=False)
    y = np.asarray(y.toarray() if hasattr(y, "toarray") else y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{path}: labels must be one class index per row (shape (n,) or "
                         f"(n, 1)), got shape {y.shape}")
    return y


def _read_array(path: str, one_row: bool = True):
    """The array in a .npy or .csv file, its size checked before it is read: a header that
    claims more data than the file holds, or a device such as /dev/zero, is refused. A .npz
    file is a scipy.sparse matrix (save_npz), kept sparse. A 1-D array is one sample (one
    row) unless one_row is False."""
    suffix = Path(path).suffix.lower()
    if suffix not in INPUT_FORMATS:
        raise ValueError(f"{path}: unknown input format {suffix or '(none)'!r}; use .npy, "
                         f".csv or .npz")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path}: not a regular file")
    if suffix == ".npz":
        import scipy.sparse
        try:
            return scipy.sparse.load_npz(path)
        except (ValueError, OSError, KeyError, NotImplementedError) as e:   # LIL: unreadable
            raise ValueError(f"{path}: not a sparse matrix written by scipy.sparse.save_npz "
                             f"({e})") from None
    if suffix == ".csv":
        try:
            X = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: not a numeric CSV file ({e})") from None
    else:
        _check_npy_header(path)
        try:
            X = np.load(path, allow_pickle=False)
        except EOFError:
            raise ValueError(f"{path}: truncated .npy file") from None
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy array of numbers ({e})") from None
    return X.reshape(1, -1) if X.ndim == 1 and one_row else X


NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}


def _check_npy_header(path: str):
    """The shape and dtype that the header claims must match the bytes the file holds."""
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise ValueError(f"{path}: not a .npy file (no NumPy header)")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = NPY_HEADER_READERS[version](f)
        except KeyError:
            raise ValueError(f"{path}: .npy format version {version} is not supported") from None
        except ValueError as e:
            raise ValueError(f"{path}: not a readable .npy header ({e})") from None
        if dtype.hasobject:
            raise ValueError(f"{path}: holds Python objects, not numbers")
        claimed = int(np.prod(shape, dtype=object)) * dtype.itemsize
        held = os.fstat(f.fileno()).st_size - f.tell()
    if claimed != held:
        raise ValueError(f"{path}: the header claims shape {shape} of {dtype} ({claimed} bytes) "
                         f"but the file holds {held} bytes of data; truncated or corrupt")


def _write_array(array: np.ndarray, path: str | None):
    fmt = "%d" if array.dtype.kind in "iub" else "%.9g"
    if path is None:
        np.savetxt(sys.stdout, array, fmt=fmt, delimiter=",")
        return
    suffix = Path(path).suffix.lower()
    if suffix not in ARRAY_FORMATS:
        raise ValueError(f"{path}: unknown output format {suffix or '(none)'!r}; use .npy or "
                         f".csv")
    with open_atomically(path) as f:
        if suffix == ".npy":
            np.save(f, array)
        else:
            np.savetxt(f, array, fmt=fmt, delimiter=",")


# --- commands ----------------------------------------------------------------------------

def _optimizer(args) -> cdnn.Optimizer:
    cls = OPTIMIZERS[args.optimizer]
    kwargs = {"lr": args.lr if args.lr is not None else (0.05 if cls is cdnn.SGD else 1e-3)}
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if cls is cdnn.SGD:
        kwargs.update(momentum=0.9 if args.momentum is None else args.momentum,
                      nesterov=args.nesterov)
    elif args.momentum is not None:
        if cls is not cdnn.RMSprop:
            raise ValueError(f"--momentum applies to sgd and rmsprop, not {args.optimizer}")
        kwargs["momentum"] = args.momentum
    if args.nesterov and cls is not cdnn.SGD:
        raise ValueError(f"--nesterov applies to sgd, not {args.optimizer}")
    return cls(**kwargs)


def _check_settings(args) -> cdnn.Optimizer:
    """The optimizer the flags ask for, and the other numeric flags, checked as the library
    checks them, before any data is read: a value it refuses is a bad argument (status 2)."""
    try:
        optimizer = _optimizer(args)
        check_real(args.dropout, "--dropout", 0, 1, high_open=True)
        if args.clip_norm is not None:
            check_real(args.clip_norm, "--clip-norm", 0, low_open=True)
    except (ValueError, TypeError) as e:
        raise BadArgument(str(e)) from None
    return optimizer


def train(args) -> int:
    optimizer = _check_settings(args)
    if args.save is not None:   # fail before training, not after
        check_writable(args.save)
    name, (X, y), (X_test, y_test) = _load_files(*args.data) if args.data else \
        _load_dataset(args)
    _, _, hidden, epochs, batch = DATASETS[_dataset_key(args)]
    hidden = args.hidden or hidden
    epochs = epochs if args.epochs is None else args.epochs
    batch = batch if args.batch_size is None else args.batch_size
    net = cdnn.MLP([X.shape[1], *hidden, int(y.max()) + 1], activation=args.activation,
                   dtype=args.dtype, seed=args.seed, dropout=args.dropout,
                   device=args.device, matmul_precision=args.matmul_precision)
    comm = None
    if args.distributed:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    trainer = cdnn.Trainer(net, optimizer, batch_size=batch, clip_norm=args.clip_norm,
                           comm=comm)
    print = builtins.print if trainer.is_chief else (lambda *_, **__: None)   # rank 0 reports
    # two short lines, not one: each within 80 columns
    print(f"{name}: {X.shape[0]} training and {X_test.shape[0]} test samples", flush=True)
    print(f"network {'-'.join(map(str, net.layer_sizes))}: {net.params.size} parameters",
          flush=True)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            history = trainer.fit(X, y, epochs=epochs, validation_data=(X_test, y_test),
                                  verbose=args.verbose)
    except FloatingPointError as e:   # the library's advice names Trainer(...); ours, flags
        what = str(e).split(";")[0]
        raise FloatingPointError(f"{what}. Try a lower --lr (now {optimizer.lr:g}), "
                                 f"--clip-norm 1.0 or scaled inputs") from None
    for warning in caught:   # the library's advice again, in flags
        text = str(warning.message).split(" Try ")[0]
        _warn("train", f"{text.rstrip('.')}: try a lower --lr, or --clip-norm 1.0"
              if "learning rate" in text else text)
    seconds = time.perf_counter() - start
    done = len(history.epoch)
    accuracy = net.evaluate(X_test, y_test)["accuracy"]
    if history.interrupted:
        # the model is not saved: a Ctrl-C'd run must not replace a good file at --save
        print(f"interrupted after {done} of {epochs} epochs, {seconds:.2f} s: test accuracy "
              f"{accuracy:.4f} so far" + (f"; not saved to {args.save}" if args.save else ""))
        return 128 + signal.SIGINT
    print(f"test accuracy {accuracy:.4f} after {done} epochs in {seconds:.2f} s")
    if args.save is not None and trainer.is_chief:
        net.save(args.save)
        print(f"saved the model to {args.save}")
    return 0


def evaluate(args) -> int:
    net = cdnn.load(args.model, device=args.device)
    name, _, (X_test, y_test) = _load_dataset(args)
    if X_test.shape[1] != net.n_inputs:
        raise ValueError(f"the model takes {net.n_inputs} features, {name} has "
                         f"{X_test.shape[1]}; choose its dataset with --dataset / --data-dir")
    metrics = net.evaluate(X_test, y_test)
    print(f"{name} test set, {X_test.shape[0]} samples: " +
          ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def predict(args) -> int:
    net = cdnn.load(args.model, device=args.device)
    X = _read_array(args.input)
    if X.ndim != 2:
        raise ValueError(f"{args.input}: expected a 2-D array (one sample per row), got "
                         f"shape {X.shape}")
    if X.shape[1] != net.n_inputs:
        raise ValueError(f"{args.input}: rows have {X.shape[1]} features, the model takes "
                         f"{net.n_inputs}")
    _write_array(net.predict_proba(X) if args.proba else net.predict(X), args.output)
    return 0


def export(args) -> int:
    cdnn.load(args.model).to_onnx(args.output)
    print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:   # the suite parses its own options (and --help)
        from cdnn import bench
        return bench.main(argv[1:])
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # reported by the subcommand's parser, which names itself
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return {"train": train, "evaluate": evaluate, "predict": predict,
                "export": export}[args.command](args)
    except BadArgument as e:
        parser.commands[args.command].error(str(e))
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print(f"cdnn {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except ImportError as e:    # an optional dependency (safetensors for model files)
        _error(args.command, f"{e}; install it with pip install {e.name}" if e.name else str(e))
    except MemoryError as e:
        _error(args.command, f"out of memory{f' ({e})' if str(e) else ''}")
    except (ValueError, TypeError, OSError, ArithmeticError) as e:
        _error(args.command, str(e) or type(e).__name__)
    return 1


def _error(command: str, message: str):
    message = " ".join(message.split())   # one line, however long
    print(f"cdnn {command}: error: {message}", file=sys.stderr)


def _warn(command: str, message: str):
    message = " ".join(message.split())
    print(f"cdnn {command}: warning: {message}", file=sys.stderr)


def _closed_pipe() -> int:
    """The reader of our output went away (`cdnn predict … | head -1`): stop without a word, as
    a command killed by SIGPIPE does. Output still buffered goes to /dev/null, so that Python's
    final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # stdout is not a file descriptor (captured in-process)
        pass
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
