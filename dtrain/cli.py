"""The ``dtrain`` command line.

    dtrain demo [--epochs 5] [--samples 4000] [--workers 2] [--device auto] [--save model.safetensors]
    dtrain validate JOB [--set key.path=value ...]
    dtrain run JOB [--workers N] [--set ...]                 # on an embedded local Dask cluster
    dtrain submit JOB [--scheduler ADDRESS] [--detach] [--set ...]
    dtrain resume OUTPUT [--scheduler ADDRESS] [--workers N] [--detach] [--set ...]
    dtrain status JOB_ID | logs JOB_ID [--follow] | cancel JOB_ID | list     [--scheduler ADDRESS]
    dtrain report OUTPUT

Every command but demo's progress takes --json and then prints exactly one JSON document on
stdout. Errors print one line on stderr (an invalid job: one line per problem) and exit
non-zero (add --verbose for the traceback); the codes are below.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

# Exit codes: a finished job's state, or why the command could not do its work.
EXIT_OK = 0  # success (a job that succeeded)
EXIT_FAILED = 1  # the job failed, or the command did (e.g. an unknown job id)
EXIT_USAGE = 2  # bad arguments or an invalid job file
EXIT_UNREACHABLE = 3  # no scheduler at the address, or it went away
EXIT_CANCELLED = 4  # the job was cancelled
EXIT_INTERRUPTED = 130  # Ctrl-C


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
        "--workers",
        type=_non_negative_int,
        default=2,
        help="worker processes of the embedded local Dask cluster (default: 2; 0: train in this process)",
    )
    demo.add_argument("--optimizer", default="sgd", help="sgd, adam or rmsprop (default: sgd)")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--save", metavar="PATH", help="save the trained model to PATH (safetensors)")
    demo.add_argument("--json", action="store_true", help="print one JSON document on stdout, no progress")

    # Options every job command takes, after its name (``dtrain status ID --json --verbose``).
    # (SUPPRESS: the subcommand's copy of --verbose must not reset a `dtrain --verbose CMD`.)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print exactly one JSON document on stdout")
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a value of the job file (repeatable), e.g. --set fit.epochs=3",
    )
    scheduler = argparse.ArgumentParser(add_help=False)
    scheduler.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="the Dask scheduler, e.g. tcp://host:8786 (default: $DTRAIN_SCHEDULER, then Dask's scheduler-address)",
    )
    scheduler.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to try reaching the scheduler (default: 10)",
    )

    validate = commands.add_parser(
        "validate",
        parents=[common, overrides],
        help="check a job file without running it",
        description="Check a job file (and its --set overrides) without running it: every problem is reported "
        "with its key path and line.",
    )
    validate.add_argument("job", metavar="JOB", help="the job file (YAML or JSON)")

    run = commands.add_parser(
        "run",
        parents=[common, overrides],
        help="run a job file on an embedded local Dask cluster",
        description="Run a job on a local Dask cluster started for it (CPU worker processes, or one worker per GPU "
        "with the gpu extra), show its progress, print a summary and write its outputs.",
    )
    run.add_argument("job", metavar="JOB", help="the job file (YAML or JSON)")
    run.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes (default: the job's cluster.workers if a count, else one per CPU core or GPU)",
    )

    submit = commands.add_parser(
        "submit",
        parents=[common, overrides, scheduler],
        help="run a job file on a Dask cluster",
        description="Submit a job to the dtrain job service of a Dask scheduler and follow it (--detach: print the "
        "job id and return; the job keeps running).",
    )
    submit.add_argument("job", metavar="JOB", help="the job file (YAML or JSON)")
    submit.add_argument("--detach", action="store_true", help="return once the job is queued")

    resume = commands.add_parser(
        "resume",
        parents=[common, overrides],
        help="continue a job from its latest checkpoint",
        description="Continue a job from the latest good checkpoint in its output location (its job file is "
        "there too): on an embedded local cluster, or with --scheduler on a Dask cluster. The final weights "
        "equal those of an uninterrupted run.",
    )
    resume.add_argument("output", metavar="OUTPUT", help="the job's output location (output.dir)")
    resume.add_argument(
        "--scheduler", metavar="ADDRESS", help="run it on this Dask scheduler (default: a local cluster)"
    )
    resume.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS")
    resume.add_argument("--workers", type=_positive_int, help="local worker processes (without --scheduler)")
    resume.add_argument("--detach", action="store_true", help="with --scheduler: return once the job is queued")

    for name, text in (("status", "show a job's state and progress"), ("cancel", "cancel a queued or running job")):
        command = commands.add_parser(
            name, parents=[common, scheduler], help=text, description=text[0].upper() + text[1:] + "."
        )
        command.add_argument("job_id", metavar="JOB_ID")
    logs = commands.add_parser(
        "logs", parents=[common, scheduler], help="print a job's log", description="Print a job's log."
    )
    logs.add_argument("job_id", metavar="JOB_ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job has ended")
    commands.add_parser(
        "list",
        parents=[common, scheduler],
        help="list the jobs of a scheduler",
        description="List the jobs of a scheduler.",
    )

    report = commands.add_parser(
        "report",
        parents=[common],
        help="summarise a job's outputs",
        description="Summarise a finished job from its output location (a directory or fsspec URL).",
    )
    report.add_argument("output", metavar="OUTPUT")
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
    with _local_client(args.workers, args.device) as client:
        history = model.fit(
            x[:split],
            y[:split],
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_data=(x[split:], y[split:]),
            seed=args.seed,
            verbose=0 if args.json else 2,
            client=client,
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


# -- job commands ---------------------------------------------------------------------------------


def _load(args: argparse.Namespace):
    from .jobs.spec import load_job

    return load_job(args.job, args.overrides)


def _validate(args: argparse.Namespace) -> int:
    job = _load(args)
    if args.json:
        _print_json({"valid": True, "job": job.to_dict()})
    else:
        spec = job.spec
        layers = " -> ".join(str(layer["units"]) for layer in spec["model"]["layers"])
        print(
            f"{args.job} is valid: job {job.name!r}, layers {layers}, {job.epochs} epoch(s) of global batch "
            f"{spec['fit']['batch_size']}, train data {spec['data']['train']['format']}, output {job.output_dir}"
        )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    return _run_locally(_load(args), args, resume=False)


def _run_locally(job, args: argparse.Namespace, resume: bool) -> int:
    """The job on a local cluster of its own: every worker of it is the job's."""
    if isinstance(job.workers, list):
        raise _UsageError(
            "cluster.workers lists worker addresses, which only exist on a running cluster: use `dtrain submit` "
            "there, or --set cluster.workers=N to run on N local workers"
        )
    workers = args.workers or job.workers or _default_local_workers(job.device)
    job.spec["cluster"]["workers"] = None  # all of the cluster below, whatever size it could be given
    with _local_client(workers, job.device) as client:
        from .jobs.client import JobsClient

        jobs = JobsClient(client=client)
        record = jobs.submit(job, resume=resume)
        return _follow(jobs, record, args)


def _resume(args: argparse.Namespace) -> int:
    import tempfile

    from .jobs.outputs import read_job_file
    from .jobs.spec import load_job

    with tempfile.TemporaryDirectory() as folder:  # the resolved job file (absolute paths) with --set applied
        path = os.path.join(folder, "job.yaml")
        with open(path, "w") as f:
            f.write(read_job_file(args.output))
        job = load_job(path, args.overrides)
    if not args.scheduler:
        return _run_locally(job, args, resume=True)
    with _jobs_client(args) as jobs:
        return _submitted(jobs, jobs.submit(job, resume=True), args)


def _submit(args: argparse.Namespace) -> int:
    job = _load(args)
    with _jobs_client(args) as jobs:
        return _submitted(jobs, jobs.submit(job), args)


def _submitted(jobs, record: dict, args: argparse.Namespace) -> int:
    """A job just queued: print its id and return (--detach), or follow it to the end."""
    if not args.detach:
        return _follow(jobs, record, args)
    if args.json:
        _print_json(record)
    else:
        print(record["job_id"])
        print(f"queued on {jobs.address}; follow it with: dtrain logs {record['job_id']} --follow", file=sys.stderr)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    with _jobs_client(args) as jobs:
        record = jobs.status(args.job_id)
    if args.json:
        _print_json(record)
    else:
        print(_describe(record))
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    with _jobs_client(args) as jobs:
        record = jobs.cancel(args.job_id)
        if record["state"] == "running":  # give the ranks their moment to stop, so "cancelled" is true
            deadline = time.monotonic() + 30
            while record["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
                record = jobs.status(args.job_id)
    if record["state"] == "running":
        raise RuntimeError(f"job {args.job_id} is still stopping after 30 s; check `dtrain status {args.job_id}`")
    if args.json:
        _print_json(record)
    else:
        print(f"{record['job_id']}: {record['state']}")
    return EXIT_OK


def _logs(args: argparse.Namespace) -> int:
    with _jobs_client(args) as jobs:
        lines: list[dict] = []
        since, state = 0, None
        while True:
            reply = jobs.logs(args.job_id, since)
            since, state = reply["next"], reply["state"]
            lines.extend(reply["lines"])
            if not args.json:
                for line in reply["lines"]:
                    print(_log_line(line), flush=True)
            if not args.follow or state in _terminal():
                break
            time.sleep(0.25)
    if args.json:
        _print_json({"job_id": args.job_id, "state": state, "lines": lines})
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    with _jobs_client(args) as jobs:
        records = jobs.list()
    if args.json:
        _print_json({"scheduler": jobs.address, "jobs": records})
        return EXIT_OK
    if not records:
        print(f"no jobs on {jobs.address}")
        return EXIT_OK
    rows = [("JOB ID", "STATE", "EPOCH", "WORKERS", "SUBMITTED", "OUTPUT")]
    for r in records:
        rows.append(
            (
                r["job_id"],
                r["state"],
                f"{r['epoch']}/{r['epochs']}",
                str(len(r["workers"]) or "-"),
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["submitted_at"])),
                r["output"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from .jobs.outputs import format_summary, read_summary

    summary = read_summary(args.output)
    if args.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    return EXIT_OK


# -- following a job --------------------------------------------------------------------------------


def _follow(jobs, record: dict, args: argparse.Namespace) -> int:
    """Until the job ends: its log lines and a progress bar (not with --json); then the summary.
    Ctrl-C cancels the job (use submit --detach to leave one running)."""
    job_id = record["job_id"]
    view = None if args.json else _JobView(job_id)
    try:
        final = jobs.wait(job_id, on_update=(lambda r: view.update(jobs, r)) if view else None)
    except KeyboardInterrupt:
        print(f"dtrain: interrupted: cancelling job {job_id}", file=sys.stderr)
        try:
            jobs.cancel(job_id)
            deadline = time.monotonic() + 15
            while jobs.status(job_id)["state"] not in _terminal() and time.monotonic() < deadline:
                time.sleep(0.2)
        except Exception:
            pass
        raise
    finally:
        if view:
            view.close()
    if args.json:
        _print_json(final)
    else:
        print(_summary_line(final))
    state = final["state"]
    if state == "failed":
        print(f"dtrain {args.command}: error: job {job_id} failed: {final['error']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_CANCELLED if state == "cancelled" else EXIT_OK


class _JobView:
    """The job's new log lines on stdout, and a bar for the epoch under way (terminals only)."""

    def __init__(self, job_id: str):
        self.job_id, self.since = job_id, 0
        self.bar = None
        self.bar_epoch = None
        print(f"job {job_id}", flush=True)

    def update(self, jobs, record: dict) -> None:
        reply = jobs.logs(self.job_id, self.since)
        self.since = reply["next"]
        if reply["lines"]:
            self._clear_bar()
            for line in reply["lines"]:
                print(_log_line(line), flush=True)
        if record["state"] == "running" and record["steps"] and sys.stderr.isatty():
            self._show_bar(record)

    def _show_bar(self, record: dict) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or self.bar_epoch != record["epoch"]:
            self._clear_bar()
            self.bar = tqdm(
                total=record["steps"], desc=f"epoch {record['epoch']}/{record['epochs']}", leave=False, file=sys.stderr
            )
            self.bar_epoch = record["epoch"]
        self.bar.n = min(record["step"], record["steps"])
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record["metrics"].items()}, refresh=False)
        self.bar.refresh()

    def _clear_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._clear_bar()


def _terminal() -> tuple[str, ...]:
    from .jobs.service import TERMINAL

    return TERMINAL


def _log_line(line: dict) -> str:
    return f"{time.strftime('%H:%M:%S', time.localtime(line['time']))}  {line['text']}"


def _seconds(record: dict) -> str:
    if record.get("started_at") and record.get("ended_at"):
        return f" in {record['ended_at'] - record['started_at']:.1f} s"
    return ""


def _metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _summary_line(record: dict) -> str:
    text = f"job {record['job_id']} {record['state']}{_seconds(record)}"
    if record["state"] == "succeeded":
        text += f" on {len(record['workers'])} worker(s): {_metrics(record['metrics'])}. Outputs in {record['output']}"
        text += f" (`dtrain report {record['output']}`)."
    elif record["state"] == "cancelled":
        text += f" at epoch {record['epoch']}/{record['epochs']}."
    return text


def _describe(record: dict) -> str:
    lines = [
        f"job       {record['job_id']} ({record['name']})",
        f"state     {record['state']}" + (f": {record['waiting_for']}" if record.get("waiting_for") else ""),
        f"progress  epoch {record['epoch']}/{record['epochs']}, step {record['step']}/{record['steps']}",
    ]
    if record["metrics"]:
        lines.append(f"metrics   {_metrics(record['metrics'])}")
    lines.append(f"workers   {', '.join(record['workers']) or '-'}")
    lines.append(f"restarts  {record['restarts']}")
    for name in ("submitted_at", "started_at", "ended_at"):
        if record.get(name):
            lines.append(f"{name.split('_')[0]:<9} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record[name]))}")
    if record.get("error"):
        lines.append(f"error     {record['error']}")
    lines.append(f"output    {record['output']}")
    return "\n".join(lines)


def _print_json(document: Any) -> None:
    from .jobs.outputs import json_text

    print(json_text(document))  # strict JSON: a diverged job's NaN loss is null


# -- clusters ---------------------------------------------------------------------------------------


class _UsageError(ValueError):
    """Arguments that cannot work together: exit code 2."""


@contextlib.contextmanager
def _jobs_client(args: argparse.Namespace):
    from .jobs.client import JobsClient

    with JobsClient(args.scheduler, timeout=args.connect_timeout) as jobs:
        yield jobs


def _default_local_workers(device: str) -> int:
    """One worker per GPU when the job may use GPUs and there are some; else one per CPU core."""
    from .backend import gpu_count

    if device in ("auto", "gpu") and _have_dask_cuda():
        gpus = gpu_count()
        if gpus:
            return gpus
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _have_dask_cuda() -> bool:
    import importlib.util

    return importlib.util.find_spec("dask_cuda") is not None


@contextlib.contextmanager
def _local_client(workers: int, device: str = "cpu"):
    """An embedded local cluster of ``workers`` worker processes (None for 0): one worker per
    GPU with dask-cuda's LocalCUDACluster when the job may use GPUs and both are there, else
    single-threaded CPU workers (each worker's BLAS gets one core)."""
    if not workers:
        yield None
        return
    import logging

    import dask
    from distributed import Client

    from .backend import gpu_count
    from .clusters import local_cluster, training_config

    # Worker start/stop chatter would bury the training output.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = None
    if device in ("auto", "gpu") and gpu_count():
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            LocalCUDACluster = None
        if LocalCUDACluster is not None:
            settings = training_config()
            with dask.config.set(settings):
                cluster = LocalCUDACluster(
                    CUDA_VISIBLE_DEVICES=list(range(min(workers, gpu_count()))),
                    threads_per_worker=1,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    config=settings,
                )
    if cluster is None:
        cluster = local_cluster(workers, dashboard_address=None, silence_logs=logging.ERROR)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


HANDLERS = {
    "demo": _demo,
    "validate": _validate,
    "run": _run,
    "submit": _submit,
    "resume": _resume,
    "status": _status,
    "logs": _logs,
    "cancel": _cancel,
    "list": _list,
    "report": _report,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if not getattr(args, "verbose", False) and args.command not in ("validate", "report"):
        # Dask logs its own view of a failure (a lost scheduler: reconnect tracebacks) on
        # stderr; the CLI's one line says what happened and what to do.
        import logging

        import distributed  # noqa: F401  (configures its loggers, one level each: set them after)

        for name in ["distributed", *[n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return HANDLERS[args.command](args)
    except KeyboardInterrupt:
        print("dtrain: interrupted", file=sys.stderr)
        return _error(args, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # `dtrain ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # one line for users (one per problem for an invalid job); the traceback with --verbose
        if getattr(args, "verbose", False):
            traceback.print_exc()
        code, message = _classify(exc)
        print(f"dtrain {args.command}: error: {message}", file=sys.stderr)
        return _error(args, message, code)


def _classify(exc: Exception) -> tuple[int, str]:
    from .jobs.client import JobServiceError, SchedulerUnreachable
    from .jobs.spec import JobError

    if isinstance(exc, JobError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, _UsageError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, SchedulerUnreachable):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, JobServiceError):
        return (EXIT_USAGE if exc.kind == "invalid" else EXIT_FAILED), str(exc)
    if isinstance(exc, (KeyError, IndexError, AttributeError, TypeError)) or not str(exc):
        return EXIT_FAILED, f"{type(exc).__name__}: {exc}"  # these say little without their type
    return EXIT_FAILED, str(exc)


def _error(args: argparse.Namespace, message: str, code: int) -> int:
    """With --json, an error is also the one JSON document on stdout."""
    if getattr(args, "json", False):
        _print_json({"error": message, "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
