"""dtrain's page on the Dask dashboard, served by the scheduler that runs the job service.

``/dtrain`` is the page (one HTML file, no outside resources: clusters often have no internet);
it reads the JSON API under ``/dtrain/api/``:

===========================================  ===================================================
``GET /dtrain/api/jobs``                      ``{"scheduler", "jobs": [...]}``: every job's state,
                                              epoch, step, latest metrics, workers, restarts
``GET /dtrain/api/jobs/<id>``                 one job's whole record: per-epoch ``history``, the
                                              live loss ``curve``, per-rank ``step_times`` of each
                                              epoch, ``stragglers``, ``restart_log``, ``files``
``GET /dtrain/api/jobs/<id>/logs``           its log lines (``?since=N``: from number N on;
                                              ``?tail=N``: the last N)
``GET /dtrain/api/jobs/<id>/files/<name>``    one of its run's output files: training.png,
                                              history.csv, steps.csv, result.json, job.yaml
===========================================  ===================================================

An unknown job or file is a 404 with ``{"error": ...}``. A handler that fails answers 500 with
``{"error": ...}`` and the failure is logged (tornado's log); nothing is raised into Dask. The
routes take any prefix (``dask scheduler --dashboard-prefix``). The page is also listed in the
Dask dashboard's own navigation bar where that bar can be reached (it is Dask's internal state:
if it cannot, the page is still at ``/dtrain``).
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any

from tornado import web

from ..storage import Location
from .outputs import HISTORY_FILE, JOB_FILE, PLOT_FILE, RESULT_FILE, STEPS_FILE, json_text

if TYPE_CHECKING:
    from distributed import Scheduler

logger = logging.getLogger(__name__)

PAGE = "dtrain"  # the page's path, and its name in the dashboard's navigation bar
_ANY_PREFIX = r"(?:/[^?#]*)?"  # (non-capturing: tornado passes only the job id and file name on)
# What the page may serve of a job's run folder, and as what: never anything else there.
SERVED_FILES = {
    PLOT_FILE: "image/png",
    HISTORY_FILE: "text/csv; charset=utf-8",
    STEPS_FILE: "text/csv; charset=utf-8",
    RESULT_FILE: "application/json",
    JOB_FILE: "text/plain; charset=utf-8",
}


def install(scheduler: Scheduler, service: Any) -> None:
    """Add the page and its API to the scheduler's web server (once per scheduler)."""
    application = getattr(scheduler, "http_application", None)
    if application is None or getattr(scheduler, "_dtrain_page", False):
        return
    scheduler._dtrain_page = True  # type: ignore[attr-defined]
    args = {"service": service}
    application.add_handlers(
        r".*",
        [
            (rf"{_ANY_PREFIX}/{PAGE}/?", PageHandler, args),
            (rf"{_ANY_PREFIX}/{PAGE}/api/jobs/?", JobsHandler, args),
            (rf"{_ANY_PREFIX}/{PAGE}/api/jobs/([^/]+)/?", JobHandler, args),
            (rf"{_ANY_PREFIX}/{PAGE}/api/jobs/([^/]+)/logs/?", LogsHandler, args),
            (rf"{_ANY_PREFIX}/{PAGE}/api/jobs/([^/]+)/files/([^/]+)", FileHandler, args),
            (rf"{_ANY_PREFIX}/{PAGE}/api/.*", NotFoundHandler, args),
        ],
    )
    _list_in_navigation(scheduler)


def _list_in_navigation(scheduler: Scheduler) -> None:
    """The dashboard's navigation bar (Status, Workers, ..., Info) gets "Dtrain": its pages list
    is built once per scheduler (distributed.dashboard.scheduler.template_variables, memoised)
    and shared by every page, so adding to it adds the link everywhere. Dask's internals: any
    failure leaves the bar as it is."""
    try:
        from distributed.dashboard.scheduler import template_variables

        pages = template_variables(scheduler)["pages"]
        if PAGE not in pages:
            pages.append(PAGE)
    except Exception as exc:  # noqa: BLE001 - no bokeh, or another Dask: the page is there all the same
        logger.info("dtrain's page is not listed in the dashboard's navigation bar: %s", exc)


class _Handler(web.RequestHandler):
    """JSON answers, errors included; never cached (the page polls)."""

    def initialize(self, service: Any) -> None:  # (the JobService: dtrain.jobs.service, which imports this)
        self.service = service

    def set_default_headers(self) -> None:
        self.set_header("Cache-Control", "no-store")

    def send_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json_text(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # An exception in a handler: tornado has logged it with its traceback; the answer says what.
        error = kwargs.get("exc_info", (None, None))[1]
        why = f"{type(error).__name__}: {error}" if error is not None else self._reason
        self.send_json({"error": why}, status_code)

    def record_or_404(self, job_id: str) -> Any:
        record = self.service.table.jobs.get(job_id)
        if record is None:
            self.send_json({"error": f"no job {job_id!r} on this scheduler"}, 404)
        return record


class PageHandler(_Handler):
    def get(self) -> None:
        if not self.request.path.endswith(f"/{PAGE}"):  # (relative links need /dtrain, not /dtrain/)
            self.redirect(self.request.path.rstrip("/"))
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(_page())


class JobsHandler(_Handler):
    def get(self) -> None:
        self.send_json({"scheduler": self.service.scheduler.address, **self.service.handle_now("list")})


class JobHandler(_Handler):
    def get(self, job_id: str) -> None:
        record = self.record_or_404(job_id)
        if record is not None:
            self.send_json(record.public())


class LogsHandler(_Handler):
    def get(self, job_id: str) -> None:
        if self.record_or_404(job_id) is not None:
            since, tail = self.get_argument("since", "0"), self.get_argument("tail", "")
            if not since.isdigit() or not (tail.isdigit() or tail == ""):
                self.send_json(
                    {"error": f"since and tail are line counts (0, 1, ...), received {since!r}, {tail!r}"}, 400
                )
                return
            reply = self.service.handle_now("logs", job_id=job_id, since=int(since))
            if tail:  # the last lines only
                reply["lines"] = reply["lines"][-int(tail) :] if int(tail) else []
            self.send_json(reply)


class FileHandler(_Handler):
    async def get(self, job_id: str, name: str) -> None:
        record = self.record_or_404(job_id)
        if record is None:
            return
        if name not in SERVED_FILES:
            self.send_json({"error": f"{name!r} is not one of the files served: {', '.join(SERVED_FILES)}"}, 404)
            return
        where = Location(record.output)
        try:  # (a URL output is read over the network: off the event loop)
            data = await asyncio.to_thread(where.read, name)
        except FileNotFoundError:
            self.send_json({"error": f"job {job_id} has not written {name} (yet): {where.where(name)}"}, 404)
            return
        self.set_header("Content-Type", SERVED_FILES[name])
        self.finish(data)


class NotFoundHandler(_Handler):
    def get(self) -> None:
        self.send_json({"error": f"no such API route: {self.request.path}"}, 404)


def _page() -> str:
    return resources.files(__package__).joinpath("dashboard.html").read_text(encoding="utf-8")
