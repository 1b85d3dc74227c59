"""A job's MLflow run (``output.mlflow``): the check at submission, and the callback the job
service adds to the job's fit (a :class:`dtrain.callbacks.MLflowLogger` that logs the job file
as parameters and as ``job.yaml``, tags the run with the job's id and name, and also writes its
warnings to the job's log)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..callbacks import Callback, MLflowLogger
from ..cluster.errors import JobCancelled
from ..mlflow_logging import open_client
from .problems import JobError, Problem, error_text
from .spec import Job


def check_tracking(job: Job) -> None:
    """A job with ``output.mlflow`` needs the MLflow client here, where it runs (the scheduler),
    and a tracking URI MLflow can use: a :class:`JobError` before the job takes any worker.
    (The server itself is not asked: one that is down costs the job a warning, not its run.)"""
    settings = job.mlflow
    if settings is None:
        return
    try:
        open_client(settings["tracking_uri"])
    except ImportError as exc:
        raise JobError(
            [Problem("output.mlflow", f"the scheduler cannot log to MLflow: {error_text(exc)}", None)], job.source
        ) from None
    except ValueError as exc:
        raise JobError([Problem("output.mlflow.tracking_uri", error_text(exc), None)], job.source) from None


class _JobLogger(MLflowLogger):
    """An MLflowLogger whose warnings also reach the job's log; a cancelled job's run ends KILLED."""

    killed_by = (KeyboardInterrupt, JobCancelled)

    def __init__(self, log: Callable[[str], None], **kwargs: Any) -> None:
        self.log = log
        super().__init__(**kwargs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.log(f"mlflow: logging to {self.tracking_uri}, experiment {self.run.experiment!r}")

    def warn(self, message: str) -> None:
        self.log(f"mlflow: {message}")
        super().warn(message)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        if self.run_id is not None:
            self.log(f"mlflow: run {self.run_id} at {self.tracking_uri}")


def tracking_callbacks(job: Job, job_id: str, log: Callable[[str], None]) -> list[Callback]:
    """The callbacks that log ``job`` (its id ``job_id``) to MLflow: none without ``output.mlflow``."""
    settings = job.mlflow
    if settings is None:
        return []
    return [
        _JobLogger(
            log,
            tracking_uri=settings["tracking_uri"],
            experiment=settings["experiment"],
            run_name=settings["run_name"] or job_id,
            tags={"dtrain.job_id": job_id, "dtrain.job_name": job.name},
            params=job.spec,
            texts={"job.yaml": job.to_yaml()},
        )
    ]
