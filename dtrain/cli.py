"""The ``dtrain`` command line (click, like Dask's own; also ``dask dtrain ...``).

    dtrain demo [--epochs 5] [--samples 4000] [--workers 2] [--device auto] [--save model.safetensors]
    dtrain validate JOB [--set key.path=value ...]
    dtrain run JOB [--workers N] [--set ...]                 # on an embedded local Dask cluster
    dtrain submit JOB [--scheduler ADDRESS] [--detach] [--set ...]
    dtrain resume OUTPUT [--scheduler ADDRESS] [--workers N] [--detach] [--set ...]
    dtrain status JOB_ID | logs JOB_ID [--follow] | cancel JOB_ID | list     [--scheduler ADDRESS]
    dtrain report OUTPUT

Wherever --scheduler ADDRESS goes, --scheduler-file PATH may go instead (the JSON file that
``dask scheduler --scheduler-file PATH`` writes); not both.

Every command but demo's progress takes --json and then prints exactly one JSON document on
stdout. Errors print one line on stderr (an invalid job: one line per problem) and exit
non-zero (add --verbose for the traceback); the codes are below.

The same group of commands is Dask's ``dask dtrain`` (the ``dask_cli`` entry point names
:data:`cli`). Only click is imported here: Dask, NumPy and the training modules are imported
by the commands that use them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import click

# Exit codes: a finished job's state, or why the command could not do its work.
EXIT_OK = 0  # success (a job that succeeded)
EXIT_FAILED = 1  # the job failed, or the command did (e.g. an unknown job id)
EXIT_USAGE = 2  # bad arguments or an invalid job file
EXIT_UNREACHABLE = 3  # no scheduler at the address, or it went away
EXIT_CANCELLED = 4  # the job was cancelled
EXIT_INTERRUPTED = 130  # Ctrl-C


class _IntAtLeast(click.ParamType):
    """An integer >= ``minimum``, with a one-line error naming ``what``."""

    name = "integer"

    def __init__(self, minimum: int, what: str):
        self.minimum, self.what = minimum, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or number < self.minimum:
            self.fail(f"expected a {self.what} integer, received {value!r}", param, ctx)
        return number


class _Seconds(click.ParamType):
    """A number of seconds > 0 (and finite), with a one-line error."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (0 < number <= 86400):
            self.fail(f"expected a number of seconds > 0 and at most 86400, received {value!r}", param, ctx)
        return number


_positive_int = _IntAtLeast(1, "positive")
_non_negative_int = _IntAtLeast(0, "non-negative")


def _demo(args: SimpleNamespace) -> int:
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
    scores = model.evaluate(x[split:], y[split:], return_dict=True)
    assert isinstance(scores, dict)
    loss, accuracy = scores["loss"], scores["accuracy"]
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


def _load(args: SimpleNamespace):
    from .jobs.spec import load_job

    return load_job(args.job, args.overrides)


def _validate(args: SimpleNamespace) -> int:
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


def _run(args: SimpleNamespace) -> int:
    return _run_locally(_load(args), args, resume=False)


def _run_locally(job, args: SimpleNamespace, resume: bool | str) -> int:
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


def _resume(args: SimpleNamespace) -> int:
    import tempfile

    from .jobs.outputs import read_job_file
    from .jobs.spec import load_job
    from .runs import is_run_folder

    with tempfile.TemporaryDirectory() as folder:  # the resolved job file (absolute paths) with --set applied
        path = os.path.join(folder, "job.yaml")
        with open(path, "w") as f:
            f.write(read_job_file(args.output))
        job = load_job(path, args.overrides)
    # OUTPUT/<run> continues that run; OUTPUT its newest (dtrain.runs)
    run = os.path.basename(os.fspath(args.output).rstrip("/").rstrip(os.sep)) if is_run_folder(args.output) else True
    if not args.scheduler and not args.scheduler_file:
        return _run_locally(job, args, resume=run)
    with _jobs_client(args) as jobs:
        return _submitted(jobs, jobs.submit(job, resume=run), args)


def _submit(args: SimpleNamespace) -> int:
    job = _load(args)
    with _jobs_client(args) as jobs:
        return _submitted(jobs, jobs.submit(job), args)


def _submitted(jobs, record: dict, args: SimpleNamespace) -> int:
    """A job just queued: print its id and return (--detach), or follow it to the end."""
    if not args.detach:
        return _follow(jobs, record, args)
    if args.json:
        _print_json(record)
    else:
        print(record["job_id"])
        print(f"queued on {jobs.address}; follow it with: dtrain logs {record['job_id']} --follow", file=sys.stderr)
    _say_where_to_watch(jobs)
    return EXIT_OK


def _status(args: SimpleNamespace) -> int:
    with _jobs_client(args) as jobs:
        record = jobs.status(args.job_id)
    if args.json:
        _print_json(record)
    else:
        print(_describe(record))
    return EXIT_OK


def _cancel(args: SimpleNamespace) -> int:
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


def _logs(args: SimpleNamespace) -> int:
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


def _list(args: SimpleNamespace) -> int:
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
    queued = sorted((r for r in records if r["state"] == "queued"), key=lambda r: r.get("queue_position") or 0)
    for r in queued:  # where each waiting job stands, and why
        print(f"#{r.get('queue_position') or '?'} in the queue: {r['job_id']}: {r.get('waiting_for') or 'starting'}")
    return EXIT_OK


def _report(args: SimpleNamespace) -> int:
    from .jobs.outputs import format_summary, read_summary

    summary = read_summary(args.output)
    if args.json:
        _print_json(summary)
    else:
        print(format_summary(summary))
    return EXIT_OK


# -- following a job --------------------------------------------------------------------------------


def _say_where_to_watch(jobs) -> None:
    page = jobs.dashboard_page()
    if page is not None:  # (stderr: --json keeps stdout to its one document)
        print(f"watch it on the dashboard: {page}", file=sys.stderr)


def _follow(jobs, record: dict, args: SimpleNamespace) -> int:
    """Until the job ends: its log lines and a progress bar (not with --json); then the summary.
    Ctrl-C cancels the job (use submit --detach to leave one running)."""
    job_id = record["job_id"]
    _say_where_to_watch(jobs)
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
        self.bar: Any = None  # a tqdm bar while an epoch's steps are shown
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
    for incident in record.get("incidents") or []:  # steps that missed their deadline
        lines.append(
            f"incident  {incident['summary']}" + (f" (stacks: {incident['folder']})" if incident.get("folder") else "")
        )
    for s in record.get("stragglers") or []:
        lines.append(f"straggler {s['message']} (epoch {s.get('epoch', '?')})")
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
def _jobs_client(args: SimpleNamespace):
    from .jobs.client import JobsClient

    with JobsClient(args.scheduler, scheduler_file=args.scheduler_file, timeout=args.connect_timeout) as jobs:
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
                    dashboard_address=":8787",
                    silence_logs=logging.ERROR,
                    config=settings,
                )
    if cluster is None:
        # The dashboard (and dtrain's page on it) at :8787, or another free port where that is taken
        cluster = local_cluster(workers, dashboard_address=":8787", silence_logs=logging.ERROR)
    with cluster, Client(cluster, set_as_default=False) as client:
        yield client


# -- the commands -----------------------------------------------------------------------------------

_CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 88}  # as `dask`'s


def _expand_prefixes(command: click.Command, ctx: click.Context, args: list[str], options_first: bool) -> list[str]:
    """A unique prefix of a long option stands for it (``--conn`` for ``--connect-timeout``), as
    argparse allowed; an ambiguous one (``--sched``) is left to click to refuse, naming the
    options it could be. ``options_first``: the group's options, which end at its command's name."""
    names = [
        name for param in command.get_params(ctx) for name in (*param.opts, *param.secondary_opts) if name[:2] == "--"
    ]
    expanded: list[str] = []
    for i, token in enumerate(args):
        if token == "--" or (options_first and not token.startswith("-")):
            return expanded + args[i:]
        if token[:2] == "--":
            name, equals, value = token.partition("=")
            matches = [known for known in names if known.startswith(name)]
            if name not in names and len(matches) == 1:
                token = matches[0] + equals + value
        expanded.append(token)
    return expanded


class _Argument(click.Argument):
    """A positional argument with a line of help (click's own ``help`` needs click 8.5)."""

    def __init__(self, name: str, metavar: str, help: str = ""):
        super().__init__([name], metavar=metavar)
        self.argument_help = help


class _Command(click.Command):
    """A dtrain command: its help lists its positional arguments, and it takes option prefixes."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _expand_prefixes(self, ctx, args, options_first=False))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(p.human_readable_name, p.argument_help) for p in self.params if isinstance(p, _Argument)]
        if rows:
            with formatter.section("Positional arguments"):
                formatter.write_dl(rows)
        super().format_options(ctx, formatter)


class _Group(click.Group):
    """The ``dtrain`` group: its commands listed in the order they are added, not sorted."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _expand_prefixes(self, ctx, args, options_first=True))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from ._version import __version__

    click.echo(f"dtrain {__version__}")
    ctx.exit(EXIT_OK)


@click.group(
    "dtrain",
    cls=_Group,
    invoke_without_command=True,
    context_settings=_CONTEXT_SETTINGS,
    help="Train dense neural networks with a Keras-style API, on one machine or a Dask cluster.",
    short_help="Train dense neural networks on one machine or a Dask cluster (dtrain).",
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="show program's version number and exit",
)
@click.option("--verbose", is_flag=True, help="show tracebacks on errors")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    if ctx.invoked_subcommand is None:  # `dtrain` alone: the help, and a usage error's status
        click.echo(ctx.get_help())
        ctx.exit(EXIT_USAGE)


# Options every job command takes, after its name (``dtrain status ID --json --verbose``).
def _common() -> list[click.Parameter]:
    return [
        click.Option(["--json"], is_flag=True, help="print exactly one JSON document on stdout"),
        click.Option(["--verbose"], is_flag=True, help="show tracebacks on errors"),
    ]


def _overrides() -> list[click.Parameter]:
    return [
        click.Option(
            ["--set", "overrides"],
            multiple=True,
            metavar="KEY.PATH=VALUE",
            help="override a value of the job file (repeatable), e.g. --set fit.epochs=3",
        )
    ]


def _scheduler(
    scheduler_help: str = "the Dask scheduler, e.g. tcp://host:8786 (default: $DTRAIN_SCHEDULER or the scheduler file "
    "$DTRAIN_SCHEDULER_FILE names, then Dask's scheduler-address config)",
) -> list[click.Parameter]:
    """--scheduler, --scheduler-file (one or the other: :func:`_invoke` refuses both) and --connect-timeout."""
    return [
        click.Option(["--scheduler"], metavar="ADDRESS", help=scheduler_help),
        click.Option(
            ["--scheduler-file"],
            metavar="PATH",
            help="instead of --scheduler: the JSON file that `dask scheduler --scheduler-file PATH` writes, "
            "holding the scheduler's address (waits up to --connect-timeout for it to appear)",
        ),
        click.Option(
            ["--connect-timeout"],
            type=_Seconds(),
            default=10.0,
            metavar="SECONDS",
            help="how long to try reaching the scheduler (and to wait for its scheduler file) (default: 10)",
        ),
    ]


def _job() -> list[click.Parameter]:
    return [_Argument("job", "JOB", "the job file (YAML or JSON)")]


def _job_id() -> click.Parameter:
    return _Argument("job_id", "JOB_ID", "the job's id, as submit printed it (`dtrain list` shows them all)")


def _add(name: str, handler: Callable[[SimpleNamespace], int], short_help: str, help: str, params: list) -> None:
    """``dtrain NAME``: ``handler`` runs with the parsed parameters as attributes of one object."""

    def callback(**values: Any) -> Any:
        return _invoke(click.get_current_context(), name, handler, values)

    cli.add_command(
        _Command(
            name, callback=callback, params=params, help=help, short_help=short_help, context_settings=_CONTEXT_SETTINGS
        )
    )


_add(
    "demo",
    _demo,
    "train the seed network (100 inputs, 64 relu, 10 softmax) on generated data",
    "Train the seed network (Dense 64 relu -> Dense 10 softmax, SGD) on seeded generated data, data-parallel on an "
    "embedded local Dask cluster (--workers 0: in this process), then report held-out accuracy.",
    [
        click.Option(
            ["--epochs"], type=_positive_int, default=5, metavar="EPOCHS", help="epochs to train (default: 5)"
        ),
        click.Option(
            ["--samples"], type=_positive_int, default=4000, metavar="SAMPLES", help="generated samples (20% held out)"
        ),
        click.Option(
            ["--batch-size"],
            type=_positive_int,
            default=32,
            metavar="BATCH_SIZE",
            help="global batch per step (default: 32)",
        ),
        click.Option(
            ["--workers"],
            type=_non_negative_int,
            default=2,
            metavar="WORKERS",
            help="worker processes of the embedded local Dask cluster (default: 2; 0: train in this process)",
        ),
        click.Option(["--optimizer"], default="sgd", metavar="OPTIMIZER", help="sgd, adam or rmsprop (default: sgd)"),
        click.Option(
            ["--device"],
            type=click.Choice(["auto", "cpu", "gpu"]),
            default="auto",
            metavar="{auto,cpu,gpu}",
            help="where to train: gpu needs CuPy and a CUDA device; auto takes one where there is one (default: auto)",
        ),
        click.Option(
            ["--seed"],
            type=int,
            default=0,
            metavar="SEED",
            help="seed of the generated data and of training (default: 0)",
        ),
        click.Option(["--save"], metavar="PATH", help="save the trained model to PATH (safetensors)"),
        click.Option(["--json"], is_flag=True, help="print one JSON document on stdout, no progress"),
    ],
)
_add(
    "validate",
    _validate,
    "check a job file without running it",
    "Check a job file (and its --set overrides) without running it: every problem is reported with its key path "
    "and line.",
    [*_common(), *_overrides(), *_job()],
)
_add(
    "run",
    _run,
    "run a job file on an embedded local Dask cluster",
    "Run a job on a local Dask cluster started for it (CPU worker processes, or one worker per GPU with the gpu "
    "extra), show its progress, print a summary and write its outputs.",
    [
        *_common(),
        *_overrides(),
        *_job(),
        click.Option(
            ["--workers"],
            type=_positive_int,
            metavar="WORKERS",
            help="worker processes (default: the job's cluster.workers if a count, else one per CPU core or GPU)",
        ),
    ],
)
_add(
    "submit",
    _submit,
    "run a job file on a Dask cluster",
    "Submit a job to the dtrain job service of a Dask scheduler and follow it (--detach: print the job id and "
    "return; the job keeps running).",
    [
        *_common(),
        *_overrides(),
        *_scheduler(),
        *_job(),
        click.Option(["--detach"], is_flag=True, help="return once the job is queued"),
    ],
)
_add(
    "resume",
    _resume,
    "continue a job from its latest checkpoint",
    "Continue a job from the latest good checkpoint in its output location (its job file is there too): on an "
    "embedded local cluster, or with --scheduler on a Dask cluster. The final weights equal those of an "
    "uninterrupted run.",
    [
        *_common(),
        *_overrides(),
        _Argument("output", "OUTPUT", "the job's output location (output.dir)"),
        *_scheduler("run it on this Dask scheduler, e.g. tcp://host:8786 (default: an embedded local cluster)"),
        click.Option(
            ["--workers"], type=_positive_int, metavar="WORKERS", help="local worker processes (without --scheduler)"
        ),
        click.Option(["--detach"], is_flag=True, help="with --scheduler: return once the job is queued"),
    ],
)
for _name, _handler, _text in (
    ("status", _status, "show a job's state and progress"),
    ("cancel", _cancel, "cancel a queued or running job"),
):
    _add(
        _name,
        _handler,
        _text,
        _text[0].upper() + _text[1:] + ".",
        [*_common(), *_scheduler(), _job_id()],
    )
_add(
    "logs",
    _logs,
    "print a job's log",
    "Print a job's log.",
    [
        *_common(),
        *_scheduler(),
        _job_id(),
        click.Option(["--follow", "-f"], is_flag=True, help="keep printing until the job has ended"),
    ],
)
_add("list", _list, "list the jobs of a scheduler", "List the jobs of a scheduler.", [*_common(), *_scheduler()])
_add(
    "report",
    _report,
    "summarise a job's outputs",
    "Summarise a finished job from its output location (a directory or fsspec URL).",
    [*_common(), _Argument("output", "OUTPUT", "the job's output location (output.dir): a directory or fsspec URL")],
)


class _DryRun:
    """``ctx.obj`` of :func:`_parse`: the commands return their parameters instead of running."""


def _invoke(ctx: click.Context, name: str, handler: Callable[[SimpleNamespace], int], values: dict) -> Any:
    if values.get("scheduler") is not None and values.get("scheduler_file") is not None:
        raise click.UsageError("--scheduler and --scheduler-file both name the scheduler: give one of them", ctx)
    args = SimpleNamespace(command=name, **values)
    # `dtrain --verbose CMD` or `dtrain CMD --verbose` (demo: only the first)
    args.verbose = bool(values.get("verbose")) or bool(ctx.parent is not None and ctx.parent.params.get("verbose"))
    if "overrides" in values:
        args.overrides = list(values["overrides"])
    if isinstance(ctx.obj, _DryRun):
        return vars(args)
    ctx.exit(_execute(handler, args))


def _execute(handler: Callable[[SimpleNamespace], int], args: SimpleNamespace) -> int:
    """The command's work, and its errors as one line on stderr (and the JSON document with --json)."""
    if not args.verbose and args.command not in ("validate", "report"):
        # Dask logs its own view of a failure (a lost scheduler: reconnect tracebacks) on
        # stderr; the CLI's one line says what happened and what to do.
        import logging

        import distributed  # noqa: F401  (configures its loggers, one level each: set them after)

        for name in ["distributed", *[n for n in logging.root.manager.loggerDict if n.startswith("distributed.")]]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("dtrain: interrupted", file=sys.stderr)
        return _error(args, "interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:  # `dtrain ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # one line for users (one per problem for an invalid job); the traceback with --verbose
        if args.verbose:
            traceback.print_exc()
        code, message = _classify(exc)
        print(f"dtrain {args.command}: error: {message}", file=sys.stderr)
        return _error(args, message, code)


def main(argv: Sequence[str] | None = None) -> int:
    """``dtrain ARGV`` (default: this process's arguments); returns the exit status."""
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="dtrain")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_FAILED)
    return EXIT_OK


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    """The parameters ``dtrain ARGV`` would run with, running nothing (to check the command lines
    of recipes and documents): ``command``, ``verbose`` and the command's own, by their names
    (``--set``: ``overrides``). Raises click's UsageError (BadParameter, NoSuchOption...) where
    ``dtrain`` would refuse the line with exit status 2."""
    parsed = cli.main(args=list(argv), prog_name="dtrain", standalone_mode=False, obj=_DryRun())
    if not isinstance(parsed, dict):  # no command: `dtrain` alone, --help, --version
        raise click.UsageError(f"no command to run in {list(argv)}")
    return parsed


def _classify(exc: Exception) -> tuple[int, str]:
    from .jobs.client import JobServiceError, SchedulerFileError, SchedulerUnreachable
    from .jobs.spec import JobError

    if isinstance(exc, (JobError, SchedulerFileError)):
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


def _error(args: SimpleNamespace, message: str, code: int) -> int:
    """With --json, an error is also the one JSON document on stdout."""
    if getattr(args, "json", False):
        _print_json({"error": message, "exit_code": code})
    return code


if __name__ == "__main__":
    sys.exit(main())
