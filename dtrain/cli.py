"""The ``dtrain`` command line.

    dtrain --version
    dtrain demo [--epochs 5] [--samples 4000] [--workers 2] [--device auto] [--save model.safetensors]

Errors print one line on stderr and exit non-zero (add --verbose for the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, with a one-line error naming ``what``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, received {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="dtrain",
        description="Train dense neural networks with a Keras-style API, on one machine or a Dask cluster.",
    )
    parser.add_argument("--version", action="version", version=f"dtrain {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="train the seed network (100 inputs, 64 relu, 10 softmax) on generated data",
        description="Train the seed network (Dense 64 relu -> Dense 10 softmax, SGD) on seeded "
        "generated data, data-parallel on an embedded local Dask cluster (--workers 0: in this "
        "process), then report held-out accuracy.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=5)
    demo.add_argument("--samples", type=_positive_int, default=4000, help="generated samples (20%% held out)")
    demo.add_argument("--batch-size", type=_positive_int, default=32, help="global batch per step (default: 32)")
    demo.add_argument(
        "--workers", type=_non_negative_int, default=2,
        help="worker processes of the embedded local Dask cluster (default: 2; 0: train in this process)",
    )
    demo.add_argument("--optimizer", default="sgd", help="sgd, adam or rmsprop (default: sgd)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--save", metavar="PATH", help="save the trained model to PATH (safetensors)")
    demo.add_argument("--json", action="store_true", help="print one JSON document on stdout, no progress")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from .datasets import make_classification
    from .layers import Dense
    from .models import Sequential

    x, y = make_classification(args.samples, n_features=100, n_classes=10, seed=args.seed)
    split = max(1, int(len(x) * 0.8))
    if split >= len(x):
        raise ValueError(f"--samples {args.samples} is too few: need at least 2 to hold one out.")
    model = Sequential(device=args.device)
    model.add(Dense(units=64, activation="relu", input_dim=100))
    model.add(Dense(units=10, activation="softmax"))
    model.compile(loss="categorical_crossentropy", optimizer=args.optimizer, metrics=["accuracy"])
    if not args.json:
        model.summary()
    start = time.perf_counter()
    with _local_client(args.workers) as client:
        history = model.fit(
            x[:split], y[:split], epochs=args.epochs, batch_size=args.batch_size,
            validation_data=(x[split:], y[split:]), seed=args.seed, verbose=0 if args.json else 2, client=client,
        )
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x[split:], y[split:])
    if args.save:
        model.save(args.save)
    result = {
        "device": model.device,
        "workers": args.workers,
        "epochs": len(history.epoch),
        "train_samples": split,
        "held_out_samples": len(x) - split,
        "seconds": round(seconds, 3),
        "held_out_loss": round(loss, 6),
        "held_out_accuracy": round(accuracy, 6),
        "chance_accuracy": 0.1,
        "history": history.history,
        "saved_to": args.save,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Trained {result['epochs']} epochs on {split} samples in {seconds:.2f}s "
            + (f"on {args.workers} local Dask workers: " if args.workers else f"in this process on {model.device}: ")
            + f"held-out accuracy {accuracy:.3f} (chance 0.100), loss {loss:.4f}."
            + (f" Saved to {args.save}." if args.save else "")
        )
    return EXIT_OK


@contextlib.contextmanager
def _local_client(workers: int):
    """An embedded LocalCluster of ``workers`` single-threaded worker processes (None for 0)."""
    if not workers:
        yield None
        return
    import logging

    from distributed import Client, LocalCluster

    # Worker start/stop chatter would bury the training output.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    with LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        yield client


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handlers = {"demo": _demo}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("dtrain: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; the traceback with --verbose
        if args.verbose:
            raise
        print(f"dtrain {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
