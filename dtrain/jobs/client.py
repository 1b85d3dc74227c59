"""Talking to the job service from any process that can reach the scheduler.

    jobs = JobsClient("tcp://scheduler:8786")
    record = jobs.submit(load_job("job.yaml"))          # registers the service if needed
    jobs.status(record["job_id"]); jobs.logs(job_id); jobs.cancel(job_id); jobs.list()
    final = jobs.wait(job_id, on_update=print)           # polls until the job has ended

Every call returns the service's plain dicts (what ``--json`` prints). The scheduler address
comes from the argument, or from a Dask scheduler file (``JobsClient(scheduler_file=PATH)``: the
JSON that ``dask scheduler --scheduler-file PATH`` writes), else ``$DTRAIN_SCHEDULER`` or
``$DTRAIN_SCHEDULER_FILE``, else Dask's ``scheduler-address`` config.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from .service import HANDLER, SERVICE_NAME, TERMINAL, JobService

ADDRESS_ENV = "DTRAIN_SCHEDULER"
FILE_ENV = "DTRAIN_SCHEDULER_FILE"
POLL_INTERVAL_S = 0.25
SCHEDULER_FILE_MAX_BYTES = 1 << 20  # a scheduler file is a few hundred bytes; a larger file is not one


class SchedulerUnreachable(ConnectionError):
    """No scheduler answered at the address (or none was given)."""


class SchedulerFileError(ValueError):
    """A scheduler file that cannot be read, or is not one (no JSON object with an address); or two
    ways of naming the scheduler at once."""


class JobServiceError(RuntimeError):
    """The service refused a request: an unknown job, an invalid job file, ..."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def read_scheduler_file(path: str | os.PathLike[str], timeout: float = 10.0) -> str:
    """The scheduler's address in a Dask scheduler file (the JSON that ``dask scheduler
    --scheduler-file PATH`` writes, and removes when the scheduler stops), read as distributed's
    ``Client(scheduler_file=...)`` reads it, with a deadline: wait for the file to appear (a
    scheduler still starting) for at most ``timeout`` seconds, then take its ``"address"``,
    reading again for a moment while the file is still being written."""
    path = os.fspath(path)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise SchedulerUnreachable(
                f"no scheduler file at {path} (waited {timeout:g} s): is the scheduler running? "
                f"`dask scheduler --scheduler-file {path}` writes it, and removes it when it stops"
            )
        time.sleep(0.05)
    problem = ""
    for attempt in range(10):  # a scheduler writes the file in place: it may be half written
        if attempt:
            time.sleep(0.05)
        try:
            with open(path, "rb") as f:
                data = f.read(SCHEDULER_FILE_MAX_BYTES + 1)
        except OSError as exc:  # a folder, no permission...
            raise SchedulerFileError(f"cannot read the scheduler file {path}: {exc.strerror or exc}") from exc
        if len(data) > SCHEDULER_FILE_MAX_BYTES:
            raise SchedulerFileError(
                f"{path} is not a Dask scheduler file: it is larger than {SCHEDULER_FILE_MAX_BYTES} bytes"
            )
        try:
            info = json.loads(data)
        except ValueError as exc:
            problem = f"not JSON ({exc})"
            continue
        address = info.get("address") if isinstance(info, dict) else None
        if isinstance(address, str) and address.strip():
            return address.strip()
        problem = 'no "address" in it'
    raise SchedulerFileError(
        f"{path} is not a Dask scheduler file: {problem}; give the file that `dask scheduler --scheduler-file "
        "PATH` writes (JSON with the scheduler's address), or the address itself with --scheduler"
    )


def scheduler_address(
    address: str | None = None, scheduler_file: str | os.PathLike[str] | None = None, *, timeout: float = 10.0
) -> str:
    """The scheduler to use: ``address``, or the one in ``scheduler_file`` (see
    :func:`read_scheduler_file`; ``timeout``: how long to wait for it to appear), else
    $DTRAIN_SCHEDULER or the file $DTRAIN_SCHEDULER_FILE names, else Dask's config."""
    if address and scheduler_file:
        raise SchedulerFileError("give the scheduler's address or its scheduler file, not both")
    if address:
        return address
    if scheduler_file:
        return read_scheduler_file(scheduler_file, timeout)
    if os.environ.get(ADDRESS_ENV) and os.environ.get(FILE_ENV):
        raise SchedulerFileError(
            f"${ADDRESS_ENV} and ${FILE_ENV} are both set, and each names a scheduler: unset one "
            "(or name the scheduler with --scheduler or --scheduler-file)"
        )
    if os.environ.get(ADDRESS_ENV):
        return os.environ[ADDRESS_ENV]
    if os.environ.get(FILE_ENV):
        return read_scheduler_file(os.environ[FILE_ENV], timeout)
    import dask

    configured = dask.config.get("scheduler-address", None)
    if configured:
        return configured
    raise SchedulerUnreachable(
        f"no scheduler address: pass --scheduler ADDRESS or --scheduler-file PATH, or set ${ADDRESS_ENV} or "
        f"${FILE_ENV} (or Dask's scheduler-address config, e.g. $DASK_SCHEDULER_ADDRESS)"
    )


class JobsClient:
    """The job service of one scheduler: at ``address``, or the one a Dask scheduler file names
    (``scheduler_file``), else as :func:`scheduler_address` finds it. ``timeout``: seconds to
    reach it. Pass ``client`` to reuse a connected ``distributed.Client``."""

    def __init__(
        self,
        address: str | None = None,
        *,
        scheduler_file: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        client: Any = None,
    ) -> None:
        from distributed import Client

        if client is None:
            address = scheduler_address(address, scheduler_file, timeout=timeout)
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
