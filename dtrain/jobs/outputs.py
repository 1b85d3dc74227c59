"""What a training job leaves in its output location, and the report read back from it.

The output location is a local directory or an fsspec URL (``memory://runs/x``,
``s3://bucket/x``...). A finished job writes there:

==================  ==========================================================================
model.safetensors   the trained model (``dtrain.load_model(OUTPUT)`` loads it)
history.csv         one row per epoch: ``epoch`` (from 1), every metric, ``seconds``
steps.csv           one row per step: the slowest rank's ``step_ms``, the median over ranks of
                    ``compute_ms``, ``communication_ms``, ``waiting_ms``, ``overhead_ms``
                    (only when the fit recorded step times: training on a cluster does)
job.yaml            the resolved job file
training.png        the training curves
result.json         the job record, its ``final`` metrics and the ``files`` written
tensorboard/        TensorBoard's event files, written as the job trains (``train/``,
                    ``validation/``: dtrain.callbacks.TensorBoard with ``update_freq=1``):
                    ``tensorboard --logdir OUTPUT`` shows every run of the job
==================  ==========================================================================

Each run of a job writes into a run folder of its own, ``OUTPUT/<run>/`` (:mod:`dtrain.runs`):
a job run again keeps the earlier runs. Reading an output location (``read_summary``,
``read_job_file``, ``dtrain.load_model``) takes its newest run, or the run folder given.

A cancelled or failed job keeps what it did: its history.csv and training.png hold the epochs it
finished, model.safetensors the weights of its latest checkpoint (``model_from`` in result.json
says which), and result.json's ``state`` says how it ended.

result.json is written last, so a result.json that lists a file means the file is complete.
Each file is written under a temporary name and moved into place (dtrain.storage.Location), so
a reader never sees half a file (on object stores the move is a copy, but the final name still
appears only once whole).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any

from ..callbacks import History, TensorBoard
from ..runs import resolve_run
from ..saving import MODEL_FILENAME, save_model
from ..storage import Location

MODEL_FILE = MODEL_FILENAME
HISTORY_FILE = "history.csv"
STEPS_FILE = "steps.csv"
JOB_FILE = "job.yaml"
PLOT_FILE = "training.png"
RESULT_FILE = "result.json"
TENSORBOARD_DIR = "tensorboard"  # a folder, written as the job trains (tensorboard_callback)
_NAMES = {
    "model": MODEL_FILE,
    "history": HISTORY_FILE,
    "steps": STEPS_FILE,
    "job": JOB_FILE,
    "plot": PLOT_FILE,
    "result": RESULT_FILE,
}  # kind (the keys write_outputs returns) -> file name

# The per-rank timings of history.step_times (seconds) that steps.csv reports, as medians over ranks.
_STEP_PARTS = ("compute", "communication", "waiting", "overhead")
_TABLE_ROWS = 12  # epochs shown in format_summary's table; longer histories show their start and end


# -- where the files go -----------------------------------------------------------------------------


def _location(output: str | os.PathLike) -> Location:
    # os.fspath first: an argument that is not a path at all raises TypeError, as it always has.
    return Location(os.fspath(output), what="an output directory or URL")


def tensorboard_callback(output: str | os.PathLike) -> TensorBoard:
    """The job's TensorBoard callback, writing to <run folder>/tensorboard as it trains: each epoch, and
    every progress report that arrives (rank 0's, about 4 a second)."""
    return TensorBoard(_location(output).where(TENSORBOARD_DIR), update_freq=1)


def _made(output: str | os.PathLike) -> Location:
    """The output location, created if missing."""
    where = _location(output)
    # Checked locally only: on object stores a file and a folder can share a name.
    if not where.is_url and os.path.exists(where.root) and not os.path.isdir(where.root):
        raise NotADirectoryError(
            f"The output location {where.root} is a file; give a directory (it is created if missing)."
        )
    where.make()
    return where


# -- writing ----------------------------------------------------------------------------------------


def write_outputs(output: str | os.PathLike, *, model, history, job_yaml: str, record: dict) -> dict[str, str]:
    """Write a job's files (see the module docstring) to ``output`` (its run folder), a local
    directory (created if missing) or an fsspec URL. ``record`` is the job record (JSON-able);
    result.json gets it with ``final`` (the last epoch's metrics) and ``files`` (kind -> file name
    in ``output``). Returns kind -> location of every file written: "model" (not when ``model``
    is None: a job that ended before any checkpoint), "history", "steps" (only when the fit
    recorded step times), "job", "plot", "result"."""
    where = _made(output)
    files = {} if model is None else {"model": _write_model(where, model)}
    files["history"] = where.write(HISTORY_FILE, _history_csv(history, record).encode())
    steps = _steps_csv(history)
    if steps is not None:
        files["steps"] = where.write(STEPS_FILE, steps.encode())
    files["job"] = where.write(JOB_FILE, job_yaml.encode())
    title = record.get("name") or ""
    if record.get("state") in ("cancelled", "failed"):
        title += f" ({record['state']} after {len(_epochs(history))} of {record.get('epochs', '?')} epochs)"
    files["plot"] = where.write(PLOT_FILE, _plot_png(history, title=title or None))
    names = {kind: _NAMES[kind] for kind in [*files, "result"]}
    result = {**record, "final": _final_metrics(history), "files": names}
    files["result"] = where.write(RESULT_FILE, _json_bytes(result))  # last: it vouches for the rest
    return files


def history_of(rows: list[dict]):
    """A History of the epochs a job's record holds (its per-epoch rows: ``epoch`` from 1, the
    logs, ``seconds``): what a job that did not finish leaves for history.csv and the plot."""
    history = History()
    history.epoch = [int(row["epoch"]) - 1 for row in rows]
    names = [k for row in rows for k in row if k not in ("epoch", "seconds")]
    for name in dict.fromkeys(names):  # (first seen first: loss, metrics, val_...)
        values: list[Any] = [row.get(name) for row in rows]  # (None where an epoch did not log it)
        history.history[name] = values
    return history  # (the rows' seconds reach history.csv through the record: _epoch_seconds)


def write_record(output: str | os.PathLike, record: dict, job_yaml: str | None = None) -> str:
    """Write (or replace) ``output``/result.json with ``record`` alone: the service calls it when
    a job starts (then with ``job_yaml``, the resolved job file that ``dtrain resume`` reads),
    fails or is cancelled. Returns its location."""
    where = _made(output)
    if job_yaml is not None:
        where.write(JOB_FILE, job_yaml.encode())
    return where.write(RESULT_FILE, _json_bytes(record))


def read_job_file(output: str | os.PathLike) -> str:
    """The resolved job file a job wrote to ``output`` when it started (for ``dtrain resume``)."""
    where = _location(resolve_run(output, JOB_FILE))
    try:
        return where.read(JOB_FILE).decode()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{where.where(JOB_FILE)} does not exist: OUTPUT must be the output location (output.dir) of a "
            "job started by `dtrain run` or `dtrain submit`."
        ) from None


def json_text(value: Any) -> str:
    """``value`` as one line of strict JSON (NaN and infinities as null): what --json prints."""
    return json.dumps(_plain(value), allow_nan=False, default=str)


def _write_model(where: Location, model) -> str:
    """save_model writes atomically where it can rename; a URL gets a local copy uploaded."""
    if not where.is_url:
        return str(save_model(model, where.where(MODEL_FILE)))
    with tempfile.TemporaryDirectory(prefix="dtrain-model-") as tmp:
        local = save_model(model, os.path.join(tmp, MODEL_FILE))
        return where.upload(MODEL_FILE, str(local))


def _json_bytes(value: Any) -> bytes:
    # default=str: a value of an unexpected type still leaves a readable record behind.
    return (json.dumps(_plain(value), indent=2, allow_nan=False, default=str) + "\n").encode()


def _plain(value: Any) -> Any:
    """``value`` as strict JSON types: NumPy scalars and arrays become numbers and lists, tuples
    lists, paths strings; NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _plain(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# -- history.csv and steps.csv --------------------------------------------------------------------


def _epochs(history) -> list[int]:
    """The 1-based epoch of each row of history.history."""
    rows = max((len(v) for v in history.history.values()), default=0)
    recorded = list(getattr(history, "epoch", []) or [])
    return [e + 1 for e in recorded] if len(recorded) == rows else list(range(1, rows + 1))


def _epoch_seconds(history, record: dict, count: int) -> list[float | None]:
    """Wall time of each epoch where known: ``history.epoch_seconds``, or a ``seconds`` entry in
    each row of the record's ``history`` (what the service's recorder may measure)."""
    seconds = getattr(history, "epoch_seconds", None)
    if seconds is None:
        rows = record.get("history") or []
        seconds = [row.get("seconds") if isinstance(row, dict) else None for row in rows]
    seconds = list(seconds)[-count:] if count else []
    return [None] * (count - len(seconds)) + [None if s is None else float(s) for s in seconds]


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _history_csv(history, record: dict) -> str:
    metrics = list(history.history)  # in the order fit logged them: loss, metrics, val_...
    epochs = _epochs(history)
    seconds = _epoch_seconds(history, record, len(epochs))
    rows = []
    for i, epoch in enumerate(epochs):
        values = [_metric_at(history.history[m], i) for m in metrics]
        took = seconds[i]
        rows.append([epoch, *values, None if took is None else round(took, 4)])
    return _csv_text(["epoch", *metrics, "seconds"], rows)


def _metric_at(values: list, i: int) -> float | None:
    return float(values[i]) if i < len(values) and values[i] is not None else None


def _steps_csv(history) -> str | None:
    """One row per recorded step from ``history.step_times`` (name -> (ranks, steps) seconds, and
    each step's ``position``: the most recent steps of the run), or None when the fit recorded
    none (single-process fits)."""
    import numpy as np

    times = getattr(history, "step_times", None) or {}
    if "step" not in times or np.asarray(times["step"]).size == 0:
        return None
    step = np.atleast_2d(np.asarray(times["step"], dtype=float))
    total = step.shape[1]
    per_epoch = int((getattr(history, "params", None) or {}).get("steps") or total)
    first = min(getattr(history, "epoch", None) or [0])  # 0-based epoch of the first recorded step
    # Where each recorded step is (a long run keeps its most recent steps only), else in order.
    positions = np.asarray(times.get("position", first * per_epoch + np.arange(total)), dtype=np.int64)
    parts = [p for p in _STEP_PARTS if p in times]
    medians = {p: np.median(np.atleast_2d(np.asarray(times[p], dtype=float)), axis=0) for p in parts}
    slowest = step.max(axis=0)  # a synchronous step lasts as long as its slowest rank
    rows = []
    for i in range(total):
        epoch, index = int(positions[i]) // per_epoch + 1, int(positions[i]) % per_epoch + 1
        rows.append([epoch, index, f"{slowest[i] * 1e3:.4f}", *(f"{medians[p][i] * 1e3:.4f}" for p in parts)])
    return _csv_text(["epoch", "step", "step_ms", *(f"{p}_ms" for p in parts)], rows)


def _final_metrics(history) -> dict[str, float | None]:
    return {name: _metric_at(values, len(values) - 1) for name, values in history.history.items() if values}


# -- training.png -----------------------------------------------------------------------------------


def _plot_png(history, title: str | None = None) -> bytes:
    """The training curves as PNG bytes: loss and val_loss on the left, every other metric and its
    val_ twin on the right. Drawn with Agg on a Figure of its own: pyplot (and the backend of the
    user's session) is never touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    curves = history.history
    epochs = _epochs(history)
    others = [m for m in curves if m != "loss" and not m.startswith("val_")]
    figure = Figure(figsize=(10 if others else 5.5, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: figure.savefig renders with Agg
    axes = figure.subplots(1, 2 if others else 1, squeeze=False)[0]
    marker = "o" if len(epochs) <= 30 else None
    groups = [("loss", ["loss"])]
    if others:
        groups.append((others[0] if len(others) == 1 else "metrics", others))
    for ax, (label, bases) in zip(axes, groups):
        drawn = 0
        for k, base in enumerate(bases):  # a metric and its val_ twin share a colour
            for name in (base, f"val_{base}"):
                if not curves.get(name):
                    continue
                values = [float("nan") if v is None else float(v) for v in curves[name]]
                ax.plot(
                    epochs[: len(values)],
                    values,
                    color=f"C{k}",
                    marker=marker,
                    markersize=3,
                    linestyle="--" if name.startswith("val_") else "-",
                    label=name,
                )
                drawn += 1
        if drawn:
            ax.legend(loc="best", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if title:
        figure.suptitle(str(title))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# -- reading back: dtrain report ------------------------------------------------------------------


def read_summary(output: str | os.PathLike) -> dict:
    """What ``dtrain report OUTPUT`` shows, from OUTPUT's result.json and history.csv (and
    steps.csv): name, job id, state, times, epochs, final metrics, the best value of every val_
    metric and its epoch, the median step time, the files present. JSON-able. ``output`` is a
    job's output location (its newest run is read) or one run folder in it."""
    where = _location(resolve_run(output, RESULT_FILE))
    if not where.exists(RESULT_FILE):
        raise FileNotFoundError(
            f"{where.where(RESULT_FILE)} does not exist, so {where.text} is not a job's output location. "
            f"OUTPUT should be the directory or URL given as `output:` in the job file (where the job wrote "
            f"result.json, model.safetensors and history.csv)."
        )
    try:
        record = json.loads(where.read(RESULT_FILE))
    except ValueError as exc:
        raise ValueError(f"{where.where(RESULT_FILE)} is not valid JSON ({exc}); the job record is damaged.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where.where(RESULT_FILE)} holds a {type(record).__name__}, not a job record.")
    epochs = _read_csv(where, HISTORY_FILE) or []
    steps = _read_csv(where, STEPS_FILE)
    started, ended = record.get("started_at"), record.get("ended_at")
    step_ms = [ms for row in steps or [] if (ms := row.get("step_ms")) is not None]
    final = record.get("final") or (
        {k: v for k, v in epochs[-1].items() if k not in ("epoch", "seconds")} if epochs else {}
    )
    known = [RESULT_FILE, MODEL_FILE, HISTORY_FILE, STEPS_FILE, JOB_FILE, PLOT_FILE]
    return {
        "output": where.text,
        "name": record.get("name"),
        "job_id": record.get("job_id"),
        "state": record.get("state"),
        "error": record.get("error"),
        "submitted_at": record.get("submitted_at"),
        "started_at": started,
        "ended_at": ended,
        "duration_s": ended - started
        if isinstance(started, (int, float)) and isinstance(ended, (int, float))
        else None,
        "workers": record.get("workers") or [],
        "device": record.get("device"),
        "epochs": len(epochs),
        "epochs_planned": record.get("epochs"),
        "final": final,
        "best": _best(epochs),
        "median_step_ms": statistics.median(step_ms) if step_ms else None,
        "history": epochs,
        "files": [name for name in known if name == RESULT_FILE or where.exists(name)],
        "model_from": record.get("model_from"),
    }


def _read_csv(where: Location, name: str) -> list[dict[str, float | None]] | None:
    """Rows of a CSV file of numbers (empty cells: None), or None if the file is absent."""
    if not where.exists(name):
        return None
    try:
        reader = csv.DictReader(io.StringIO(where.read(name).decode()))
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in reader]
    except ValueError as exc:
        raise ValueError(f"{where.where(name)} is not a CSV file of numbers ({exc}); it is damaged.") from None


def _higher_is_better(metric: str) -> bool:
    return "acc" in metric  # accuracies; losses and errors (mse, mae) go down


def _best(epochs: list[dict]) -> dict[str, dict[str, float]]:
    """Best value of every val_ metric and the (1-based) epoch it was reached in."""
    best: dict[str, dict[str, float]] = {}
    for metric in [k for k in (epochs[0] if epochs else {}) if k.startswith("val_")]:
        scored = [
            (row[metric], row["epoch"]) for row in epochs if row.get(metric) is not None and math.isfinite(row[metric])
        ]
        if scored:
            pick = max if _higher_is_better(metric) else min
            value, epoch = pick(scored, key=lambda pair: pair[0])
            best[metric] = {"value": value, "epoch": int(epoch)}
    return best


def format_summary(summary: dict) -> str:
    """A short report: aligned lines about the job, then a per-epoch table."""
    s = summary
    lines = [("job", f"{s.get('name') or '-'} ({s.get('job_id') or 'no id'})"), ("state", str(s.get("state") or "-"))]
    if s.get("error"):
        lines.append(("error", str(s["error"])))
    when = _time(s.get("started_at"))
    if s.get("ended_at") is not None:
        when += f" to {_time(s['ended_at'])}"
    if s.get("duration_s") is not None:
        when += f" ({_duration(s['duration_s'])})"
    lines.append(("ran", when))
    workers = s.get("workers") or []
    if workers:
        lines.append(
            ("workers", f"{len(workers)}: {', '.join(workers)}" + (f" ({s['device']})" if s.get("device") else ""))
        )
    planned = s.get("epochs_planned")
    lines.append(("epochs", f"{s.get('epochs', 0)}" + (f" of {planned}" if planned else "")))
    if s.get("final"):
        lines.append(("final", "  ".join(f"{k} {_number(v)}" for k, v in s["final"].items())))
    if s.get("best"):
        lines.append(
            ("best", "  ".join(f"{k} {_number(b['value'])} (epoch {b['epoch']})" for k, b in s["best"].items()))
        )
    if s.get("median_step_ms") is not None:
        lines.append(("step", f"{s['median_step_ms']:.2f} ms (median)"))
    source = s.get("model_from")
    if isinstance(source, dict):  # a job that did not finish: its model is its latest checkpoint's
        where = f"epoch {source.get('epoch')}" + (f", step {source['step']}" if source.get("step") else "")
        lines.append(("model", f"from its latest checkpoint ({where}: {source.get('checkpoint')})"))
    elif s.get("state") in ("cancelled", "failed") and MODEL_FILE not in (s.get("files") or []):
        lines.append(("model", "none: the job wrote no checkpoint before it ended"))
    lines.append(("files", ", ".join(s.get("files") or []) or "-"))
    lines.append(("output", str(s.get("output"))))
    width = max(len(label) for label, _ in lines)
    text = [f"{label.ljust(width)}  {value}" for label, value in lines]
    table = _epoch_table(s.get("history") or [])
    return "\n".join(text + ([""] + table if table else []))


def _epoch_table(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    columns = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
    if len(rows) > _TABLE_ROWS:  # the start and the end say how training went
        head, tail = 3, _TABLE_ROWS - 4
        shown: list[dict | None] = [*rows[:head], None, *rows[-tail:]]
    else:
        shown = list(rows)
    cells = [columns] + [
        ["..." for _ in columns]
        if row is None
        else [str(int(row[c])) if c == "epoch" else _number(row.get(c)) for c in columns]
        for row in shown
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return ["  ".join(cell.rjust(w) for cell, w in zip(r, widths)).rstrip() for r in cells]


def _number(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    plain = value == 0 or (math.isfinite(value) and 1e-3 <= abs(value) < 1e4)
    return f"{value:.4f}" if plain else f"{value:.4g}"


def _time(epoch_seconds: Any) -> str:
    if not isinstance(epoch_seconds, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_seconds))


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
