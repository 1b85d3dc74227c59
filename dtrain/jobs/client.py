"""Talking to the job service from any process that can reach the scheduler.

    jobs = JobsClient("tcp://scheduler:8786")
    record = jobs.submit(load_job("job.yaml"))          # registers the service if needed
    jobs.status(record["job_id"]); jobs.logs(job_id); jobs.cancel(job_id); jobs.list()
    final = jobs.wait(job_id, on_update=print)           # polls until the job has ended

Every call returns the service's plain dicts (what ``--json`` prints). The scheduler address
comes from the argument, else ``$DTRAIN_SCHEDULER``, else Dask's ``scheduler-address`` config.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from .service import HANDLER, SERVICE_NAME, TERMINAL, JobService

ADDRESS_ENV = "DTRAIN_SCHEDULER"
POLL_INTERVAL_S = 0.25


class SchedulerUnreachable(ConnectionError):
    """No scheduler answered at the address (or none was given)."""


class JobServiceError(RuntimeError):
    """The service refused a request: an unknown job, an invalid job file, ..."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def scheduler_address(address: str | None = None) -> str:
    """The scheduler to use: ``address``, else $DTRAIN_SCHEDULER, else Dask's config."""
    if address:
        return address
    if os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV]
    import dask

    configured = dask.config.get("scheduler-address", None)
    if configured:
        return configured
    raise SchedulerUnreachable(
        f"no scheduler address: pass --scheduler ADDRESS, or set ${ADDRESS_ENV} "
        "(or Dask's scheduler-address config, e.g. $DASK_SCHEDULER_ADDRESS)"
    )


class JobsClient:
    """The job service of one scheduler. Pass ``client`` to reuse a connected ``distributed.Client``."""

    def __init__(self, address: str | None = None, *, timeout: float = 10.0, client: Any = None) -> None:
        from distributed import Client

        if client is None:
            address = scheduler_address(address)
            try:
                client = Client(address, timeout=f"{timeout}s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                # A TLS scheduler called at tcp:// resets the connection, or takes it and never answers.
                tls_like = isinstance(exc, TimeoutError) or "reset" in str(exc).lower()
                hint = (
                    "; if it is a TLS scheduler, use its tls:// address and Dask's TLS client settings"
                    if tls_like and str(address).startswith("tcp://")
                    else ""
                )
                raise SchedulerUnreachable(
                    f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({exc or type(exc).__name__}){hint}"
                ) from exc
            except TypeError as exc:  # Dask's way of saying that a tls:// address has no TLS settings
                if not address.startswith("tls://"):
                    raise
                raise SchedulerUnreachable(
                    f"{address} needs TLS: set Dask's TLS client settings (DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
                    "__TLS__CLIENT__CERT and __TLS__CLIENT__KEY; see deploy/README.md) and try again"
                ) from exc
            self._owned = True
        else:
            self._owned = False
        self.client = client
        self.address = client.scheduler.address
        self._service_seen = False  # once there, it stays for the scheduler's lifetime

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------

    def has_service(self) -> bool:
        if not self._service_seen:
            try:
                self._service_seen = bool(self.client.run_on_scheduler(_has_service))
            except OSError as exc:
                raise SchedulerUnreachable(f"lost the Dask scheduler at {self.address} ({exc})") from exc
            except Exception as exc:  # e.g. dtrain cannot be imported there
                raise JobServiceError(
                    f"could not ask the scheduler at {self.address} about dtrain's job service ({type(exc).__name__}: "
                    f"{exc}); is dtrain installed in the scheduler's Python environment?"
                ) from exc
        return self._service_seen

    def ensure_service(self) -> None:
        """Register the service on the scheduler unless it is there (dtrain must be installed there)."""
        if not self.has_service():
            try:
                self.client.register_plugin(JobService(), name=SERVICE_NAME)
            except Exception as exc:
                raise JobServiceError(
                    f"could not start dtrain's job service on the scheduler at {self.address} ({type(exc).__name__}: "
                    f"{exc}); is dtrain installed in the scheduler's Python environment?"
                ) from exc

    def submit(self, job: Any, *, resume: bool | str = False) -> dict[str, Any]:
        """Queue a validated :class:`~dtrain.jobs.spec.Job`; returns its record (``job_id``, ``state``,
        ``output``: the run's own folder...). ``resume``: continue from the latest checkpoint of
        the newest run in the job's output location (True), or of the run of that name."""
        self.ensure_service()
        return self._call("submit", spec=job.to_dict(), source=job.source, resume=resume)

    def dashboard_page(self) -> str | None:
        """The address of dtrain's page on the scheduler's dashboard (``.../dtrain``), or None
        where the scheduler serves no dashboard."""
        try:
            link = self.client.dashboard_link
        except Exception:  # noqa: BLE001 - no dashboard service: nothing to point at
            return None
        if not link:
            return None
        base = link[: -len("/status")] if link.endswith("/status") else link.rstrip("/")
        return f"{base}/dtrain"

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("status", job_id=job_id)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("cancel", job_id=job_id)

    def logs(self, job_id: str, since: int = 0) -> dict[str, Any]:
        return self._call("logs", job_id=job_id, since=since)

    def list(self) -> list[dict[str, Any]]:
        if not self.has_service():
            return []
        return self._call("list")["jobs"]

    def wait(
        self, job_id: str, on_update: Callable[[dict], None] | None = None, poll: float = POLL_INTERVAL_S
    ) -> dict[str, Any]:
        """Poll the job until it has ended; ``on_update(record)`` sees every poll. Returns the final record."""
        while True:
            record = self.status(job_id)
            if on_update is not None:
                on_update(record)
            if record["state"] in TERMINAL:
                return record
            time.sleep(poll)

    def _call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        if self.client.status not in ("running", "newly-created"):  # it lost the scheduler
            raise SchedulerUnreachable(
                f"lost the Dask scheduler at {self.address} (the client is {self.client.status})"
            )
        if op != "submit" and not self.has_service():
            raise JobServiceError(
                f"no dtrain jobs on the scheduler at {self.address}: nothing was submitted to it yet (or it was "
                "restarted, which forgets its jobs)",
                kind="unknown",
            )
        try:
            reply = self.client.sync(getattr(self.client.scheduler, HANDLER), action=op, **kwargs)
        except OSError as exc:
            raise SchedulerUnreachable(f"lost the Dask scheduler at {self.address} ({exc})") from exc
        if not isinstance(reply, dict):  # the handler is gone: the scheduler restarted
            self._service_seen = False
            raise JobServiceError(
                f"no dtrain job service on the scheduler at {self.address} any more (it restarted and forgot its jobs; "
                "their outputs remain: `dtrain resume OUTPUT` continues one)",
                kind="unknown",
            )
        if "refused" in reply:
            raise JobServiceError(reply["refused"], reply.get("kind", ""))
        return reply


def _has_service(dask_scheduler: Any) -> bool:
    return HANDLER in dask_scheduler.handlers
