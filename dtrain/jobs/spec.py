"""Job files: one YAML (or JSON) file that describes a whole training job.

    job = load_job("examples/jobs/seed_network.yaml", overrides=["fit.epochs=10"])
    model = job.build_model()                  # compiled, from the model and compile sections
    data = job.data()                          # {"x", "y", "validation_data", "validation_split"}
    model.fit(data["x"], data["y"], validation_data=data["validation_data"],
              validation_split=data["validation_split"], **job.fit_options(), client=client)

Everything is checked before anything runs, and every problem is reported, not just the first:
:class:`JobError` lists them one per line as ``<file>: <key.path> (line N): <message>``. The
checks construct the real objects (``Dense``, the optimizer, the loss, the metrics, a compiled
``Sequential``), so a job that validates builds; they read no data (local files must exist, URLs
must use a protocol fsspec knows), so validating stays fast and works offline.

The resolved job (``Job.spec``) has every default filled in and every local path absolute, so it
means the same thing wherever it is sent (``dtrain submit`` sends it to the scheduler as a dict,
which :func:`job_from_dict` validates again).

The parts live in their own modules: :mod:`~dtrain.jobs.problems` (:class:`Problem`,
:class:`JobError`), :mod:`~dtrain.jobs.reading` (YAML/JSON with lines, ``--set``) and
:mod:`~dtrain.jobs.schema` (the sections and their checks); this module puts them together.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .. import sources
from ..checkpoints import spec_hash
from ..config import FitConfig
from ..model import Sequential
from .problems import JobError, Problem, error_text
from .reading import MAX_FILE_BYTES, apply_overrides, parse, plain_bounds_problem
from .schema import LAYER_TYPES, Checker, metric_identifier, validate

__all__ = ["Job", "JobError", "Problem", "load_job", "job_from_dict"]

# -- putting it together --------------------------------------------------------------------------------


def _finish(raw: Any, ck: Checker, source: str | None, early: Sequence[Problem] = ()) -> Job:
    spec = validate(raw, ck, source)
    problems = [*early, *ck.problems]
    if problems:
        raise JobError(problems, source)
    return Job(copy.deepcopy(spec), source)


def load_job(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Job:
    """Read, override (``--set key.path=value`` strings) and validate a job file (YAML, or JSON by
    its .json suffix or its content). Raises :class:`JobError` listing every problem."""
    source = os.fspath(path)
    if os.path.exists(source) and not os.path.isfile(source):  # a FIFO would block, a device never end
        what = "a folder" if os.path.isdir(source) else "not a regular file (a FIFO, a socket or a device?)"
        raise JobError([Problem("", f"cannot read the job file: it is {what}", None)], source)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read(MAX_FILE_BYTES + 1)  # (parse refuses more than that)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else error_text(exc)
        raise JobError([Problem("", f"cannot read the job file: {reason}", None)], source) from None
    parsed = parse(source, text)
    if parsed.data is None and parsed.problems:  # a syntax error: nothing to check
        raise JobError(parsed.problems, source)
    if parsed.data is None:
        empty = Problem("", "the job file is empty: it needs at least the model, compile and data sections", None)
        raise JobError([empty], source)
    raw = parsed.data
    overridden, override_problems = apply_overrides(raw, overrides)
    ck = Checker(
        lines=parsed.lines,
        overridden=overridden,
        base_dir=os.path.dirname(os.path.abspath(source)),
        check_files=True,
    )
    return _finish(raw, ck, source, [*parsed.problems, *override_problems])


def job_from_dict(
    spec: dict, *, base_dir: str | os.PathLike | None = None, check_files: bool = True, source: str | None = None
) -> Job:
    """Validate an already-parsed spec (the service receives resolved jobs as dicts). Relative
    paths are taken from ``base_dir`` (default: the current directory); ``check_files=False``
    skips checking that local files exist (they need not exist where the job is only queued)."""
    ck = Checker(
        lines={},
        overridden=set(),
        base_dir=os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd()),
        check_files=check_files,
    )
    too_big = plain_bounds_problem(spec)  # (a submission is bounded like a job file)
    if too_big is not None:
        raise JobError([too_big], source)
    return _finish(_copy_with_lists(spec), ck, source)


def _copy_with_lists(value: Any, active: frozenset = frozenset()) -> Any:
    """A copy of ``value`` with tuples as lists: a spec that crossed Dask's comms (msgpack) has
    tuples where the job file had lists. A structure that contains itself is left to the checks."""
    if not isinstance(value, (dict, list, tuple)) or id(value) in active:
        return value
    active = active | {id(value)}
    if isinstance(value, dict):
        return {key: _copy_with_lists(item, active) for key, item in value.items()}
    return [_copy_with_lists(item, active) for item in value]


# -- the job ---------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A validated job. ``spec`` is the resolved job: every default filled in, every local path
    absolute, plain JSON-able data."""

    spec: dict
    source: str | None = None  # the job file it came from

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def output_dir(self) -> str:
        return self.spec["output"]["dir"]

    @property
    def mlflow(self) -> dict | None:
        """``output.mlflow``: {tracking_uri, experiment, run_name}, or None (the job logs to no MLflow run)."""
        return self.spec["output"].get("mlflow")

    @property
    def epochs(self) -> int:
        return self.spec["fit"]["epochs"]

    @property
    def workers(self) -> int | list[str] | None:
        return self.spec["cluster"]["workers"]

    @property
    def device(self) -> str:
        return self.spec["cluster"]["device"]

    def to_dict(self) -> dict:
        return copy.deepcopy(self.spec)

    def to_yaml(self) -> str:
        """The resolved job file; ``load_job`` reads it back to the same spec."""
        header = "# dtrain job, resolved: every default filled in, local paths absolute\n"
        return header + yaml.safe_dump(self.spec, sort_keys=False, default_flow_style=False)

    def build_model(self) -> Any:
        """A compiled ``dtrain.Sequential`` on ``cluster.device`` (its weights are built by fit)."""

        spec = self.to_dict()
        model_spec, compile_spec = spec["model"], spec["compile"]
        layers = [
            LAYER_TYPES[layer.get("type", "dense")](**{k: v for k, v in layer.items() if k != "type"})
            for layer in model_spec["layers"]
        ]
        model = Sequential(layers, name=self.name, device=self.device, dtype=model_spec["dtype"])
        model.compile(
            optimizer=compile_spec["optimizer"],
            loss=compile_spec["loss"],
            metrics=[metric_identifier(m) for m in compile_spec["metrics"]],
        )
        return model

    def data(self) -> dict:
        """``{"x", "y", "validation_data", "validation_split"}`` for ``fit``: dtrain sources,
        which read nothing until training (each worker reads its own rows)."""
        data = self.spec["data"]
        validation = data["validation"]
        split = self._validation_split()
        validation_data = self._open(validation) if validation is not None and "split" not in validation else None
        x, y = self._open(data["train"])
        return {"x": x, "y": y, "validation_data": validation_data, "validation_split": split}

    def _validation_split(self) -> float:
        """``data.validation.split``, or 0.0 when the job validates on other data or not at all."""
        validation = self.spec["data"]["validation"]
        return float(validation["split"]) if validation is not None and "split" in validation else 0.0

    def _open(self, source: dict) -> tuple[Any, Any]:
        # Opening reads nothing: each worker reads its own rows during training.
        fmt = source["format"]
        options = source.get("storage_options") or None
        if fmt == "synthetic":
            return sources.from_synthetic(
                source["samples"],
                source["features"],
                source["classes"],
                seed=source["seed"],
                separation=source["separation"],
                dtype=self.spec["model"]["dtype"],
            )
        if fmt == "npy":
            return sources.from_npy(source["x"], options), sources.from_npy(source["y"], options)
        if fmt == "npz":
            return sources.from_npz(source["path"], x=source["x"], y=source["y"], storage_options=options)
        read = sources.from_parquet if fmt == "parquet" else sources.from_csv
        return read(source["path"], label=source["label"], features=source["features"], storage_options=options)

    def fit_options(self) -> dict:
        """``epochs, batch_size, seed, shuffle, shards, timeout, max_restarts, on_nonfinite,
        class_weight`` as ``Sequential.fit`` takes them."""
        options = dict(self.spec["fit"])
        if options.get("class_weight") is not None:
            options["class_weight"] = {int(k): v for k, v in options["class_weight"].items()}
        return options

    def checkpoint_dir(self, run_dir: str | None = None) -> str | None:
        """``<run folder>/checkpoints`` (a run's checkpoints are its own: two runs' never mix),
        or None when ``output.checkpoint`` is false. ``run_dir``: the run's folder
        (``dtrain.runs``; the output location itself where not given)."""
        if self.spec["output"]["checkpoint"] is False:
            return None
        base = run_dir or self.output_dir
        return f"{base.rstrip('/')}/checkpoints" if "://" in base else os.path.join(base, "checkpoints")

    def fit_config(self, resume: bool = False, run_dir: str | None = None) -> FitConfig:
        """The job's whole fit configuration, checked as ``Sequential.fit`` checks its arguments:
        the fit section, the validation split, the checkpoint policy, and the job's data as part of
        every checkpoint's identity (a checkpoint of another job's data is never resumed from).
        ``run_dir``: the folder the run writes (its checkpoints are there); ``resume``: continue
        from its latest checkpoint."""
        checkpoint = self.spec["output"]["checkpoint"]
        if resume and checkpoint is False:
            raise ValueError(
                "this job writes no checkpoints (output.checkpoint: false): there is nothing to resume from"
            )
        policy = (
            {}
            if checkpoint is False
            else {"checkpoint_every": checkpoint["every"], "keep_checkpoints": checkpoint["keep"]}
        )
        return FitConfig.make(
            **self.fit_options(),
            verbose=0,
            validation_split=self._validation_split(),
            checkpoint_dir=self.checkpoint_dir(run_dir),
            **policy,
            resume_from=self.checkpoint_dir(run_dir) if resume else None,
            elastic=self.spec["cluster"]["elastic"],
            min_workers=self.spec["cluster"]["min_workers"],
            max_workers=self.spec["cluster"]["max_workers"],
            checkpoint_extra={"job": spec_hash(self.spec["data"])},
        )
