"""dtrain's page on the Dask dashboard (issue 19), as users meet it: a real `dask scheduler`
with the job service preloaded and its dashboard on, real `dask worker` processes, a job
submitted with the CLI, the JSON API read over HTTP, and the page opened in a real headless
Chromium (the Debian package; .ci/run installs it) driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from processes import SEED_JOB, DaskProcesses, dtrain_cli, free_port, json_of, long_job_args

pytestmark = pytest.mark.cluster
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def dashboard():
    """A scheduler with the job service and its dashboard, and 2 workers: (address, page URL base)."""
    http = free_port()
    args = ["--dashboard-address", f"127.0.0.1:{http}", "--preload", "dtrain.jobs.service"]
    with DaskProcesses(2, scheduler_args=args) as cluster:
        yield cluster.address, f"http://127.0.0.1:{http}"


def get(url: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get("Content-Type", "")


def get_json(url: str) -> tuple[int, dict]:
    status, body, kind = get(url)
    assert kind.startswith("application/json"), (url, kind, body[:200])
    return status, json.loads(body)


def running_job(address: str, out: Path, epochs: int = 2) -> str:
    """A long 2-worker job, once it has finished ``epochs`` epochs."""
    proc = dtrain_cli("submit", str(SEED_JOB), "--scheduler", address, "--detach", "--json", *long_job_args(out, 2))
    assert proc.returncode == 0, proc.stderr
    assert "watch it on the dashboard: http://127.0.0.1:" in proc.stderr and "/dtrain" in proc.stderr, proc.stderr
    job_id = json_of(proc)["job_id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = json_of(dtrain_cli("status", job_id, "--scheduler", address, "--json"))
        if len(record["history"]) >= epochs or record["state"] != "running" and record["state"] != "queued":
            break
        time.sleep(0.5)
    assert record["state"] == "running" and len(record["history"]) >= epochs, record
    return job_id


def test_the_api_gives_the_queue_a_jobs_live_record_and_clear_errors(dashboard, tmp_path):
    address, base = dashboard
    job_id = running_job(address, tmp_path / "out")
    try:
        status, listing = get_json(f"{base}/dtrain/api/jobs")
        assert status == 200 and listing["scheduler"] == address
        brief = next(job for job in listing["jobs"] if job["job_id"] == job_id)
        assert brief["state"] == "running" and brief["epoch"] >= 2 and len(brief["workers"]) == 2
        assert "loss" in brief["metrics"] and brief["restarts"] == 0 and "curve" not in brief
        status, job = get_json(f"{base}/dtrain/api/jobs/{job_id}")
        assert status == 200 and len(job["history"]) >= 2 and "val_loss" in job["history"][0]
        assert len(job["curve"]) >= 3 and all(0 <= x <= job["epoch"] for x, _ in job["curve"])
        latest = job["step_times"][-1]  # each rank's median step time of the latest epoch
        assert [r["rank"] for r in latest["ranks"]] == [0, 1]
        assert {r["worker"] for r in latest["ranks"]} == set(job["workers"])
        for r in latest["ranks"]:
            assert r["compute_ms"] > 0 and r["communication_ms"] >= 0 and r["waiting_ms"] >= 0
            assert abs(r["communication_ms"] + r["waiting_ms"] - r["allreduce_ms"]) < 1e-6
        assert min(r["waiting_ms"] for r in latest["ranks"]) == 0  # the slowest rank waits for nobody
        assert isinstance(job["stragglers"], list)
        status, logs = get_json(f"{base}/dtrain/api/jobs/{job_id}/logs?tail=2")
        assert status == 200 and len(logs["lines"]) == 2 and logs["lines"][-1]["text"].startswith("epoch ")
        status, body, kind = get(f"{base}/dtrain/api/jobs/{job_id}/files/job.yaml")
        assert status == 200 and kind.startswith("text/plain") and b"seed_network" in body
        # bad requests: a clear JSON error, and the scheduler goes on serving
        for path, code, says in [
            ("/dtrain/api/jobs/no-such-job", 404, "no job 'no-such-job'"),
            (f"/dtrain/api/jobs/{job_id}/files/lease.json", 404, "not one of the files served"),
            (f"/dtrain/api/jobs/{job_id}/files/model.safetensors", 404, "not one of the files served"),
            (f"/dtrain/api/jobs/{job_id}/files/training.png", 404, "has not written training.png (yet)"),
            (f"/dtrain/api/jobs/{job_id}/logs?since=-1", 400, "line counts"),
            ("/dtrain/api/nothing/here", 404, "no such API route"),
        ]:
            status, error = get_json(base + path)
            assert status == code and says in error["error"], (path, status, error)
    finally:
        dtrain_cli("cancel", job_id, "--scheduler", address)
    assert json_of(dtrain_cli("list", "--scheduler", address, "--json"))["jobs"]


def test_a_failing_handler_answers_500_and_the_scheduler_goes_on(dashboard, tmp_path):
    """A file that cannot be read (here a folder where history.csv should be) fails its handler:
    the answer is a JSON error, the scheduler and its other pages are unharmed."""
    address, base = dashboard
    out = tmp_path / "done"
    proc = dtrain_cli(
        "submit", str(SEED_JOB), "--scheduler", address, "--json", "--set", f"output.dir={out}", "--set", "fit.epochs=1"
    )
    record = json_of(proc)
    assert record["state"] == "succeeded", proc.stderr
    status, body, kind = get(f"{base}/dtrain/api/jobs/{record['job_id']}/files/training.png")
    assert status == 200 and kind == "image/png" and body.startswith(b"\x89PNG")
    history = Path(record["output"]) / "history.csv"
    history.unlink()
    history.mkdir()
    status, error = get_json(f"{base}/dtrain/api/jobs/{record['job_id']}/files/history.csv")
    assert status == 500 and "NotARegularFile" in error["error"]
    assert get(f"{base}/dtrain/api/jobs")[0] == 200 and get(f"{base}/health")[0] == 200
    assert json_of(dtrain_cli("status", record["job_id"], "--scheduler", address, "--json"))["state"] == "succeeded"


def test_the_dask_dashboard_lists_the_page_in_its_navigation(dashboard):
    _, base = dashboard
    status, body, _ = get(f"{base}/status")
    assert status == 200 and b'href="dtrain"' in body


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian's chromium package; .ci/run installs it)")
def test_the_page_shows_a_running_jobs_curves_in_a_real_browser(dashboard, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install '.[test]')")
    address, base = dashboard
    job_id = running_job(address, tmp_path / "out", epochs=3)
    errors: list[str] = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
                + ["--disable-sync", "--no-first-run"],
            )
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/dtrain#job={job_id}")
            row = page.locator(f'tr[data-job-id="{job_id}"]')
            row.wait_for(timeout=15_000)
            assert "running" in row.inner_text()
            live = page.locator('#loss path.series[data-name="loss (live)"]')
            live.wait_for(timeout=15_000)
            first = int(live.get_attribute("data-points") or 0)
            assert first >= 3
            page.wait_for_function(  # the curve grows while the job trains
                f"() => Number(document.querySelector('#loss path.series').dataset.points) > {first}", timeout=20_000
            )
            assert page.locator('#loss circle[data-name="val_loss (epoch)"]').count() >= 3
            assert page.locator('#metrics circle[data-name="val_accuracy"]').count() >= 3
            assert page.locator("#ranks rect.compute").count() == 2  # one bar per rank
            assert page.locator("#stragglers").inner_text()
            assert page.locator("#files a", has_text="history.csv").count() == 1
            screenshot = os.environ.get("DTRAIN_SCREENSHOT") or str(tmp_path / "dashboard.png")
            page.screenshot(path=screenshot, full_page=True)
            browser.close()
    finally:
        dtrain_cli("cancel", job_id, "--scheduler", address)
    assert errors == []
    assert Path(screenshot).stat().st_size > 10_000


def test_each_epochs_rank_times_split_waiting_from_communication_and_name_stragglers():
    """What the page shows of a job's ranks, from their per-epoch reports (as the supervisor hands
    them to the job service, in any order): waiting = the slowest rank's compute minus one's own
    (at most its allreduce time), the rest of the allreduce is communication; a rank computing
    over 10% slower than the median is a straggler, named with its worker."""
    from dtrain.jobs.service import JobRecord, _rank_timed

    record = JobRecord(job_id="j", name="j", spec={}, output="out", requested=None, epochs=3)
    seconds = {"allreduce": 0.004, "step": 0.015}
    for rank, compute in ((2, 0.0120), (0, 0.0100), (1, 0.0101)):  # rank 2 is 20% slower
        _rank_timed(record, 0, rank, f"tcp://w{rank}:1", {"compute": compute, **seconds})
    [epoch] = record.step_times
    assert epoch["epoch"] == 1 and [r["rank"] for r in epoch["ranks"]] == [0, 1, 2]
    r0, r1, r2 = epoch["ranks"]
    assert r0["waiting_ms"] == pytest.approx(2.0) and r0["communication_ms"] == pytest.approx(2.0)
    assert (
        r1["waiting_ms"] == pytest.approx(1.9) and r2["waiting_ms"] == 0 and r2["communication_ms"] == pytest.approx(4)
    )
    [slow] = record.stragglers
    assert slow["rank"] == 2 and slow["worker"] == "tcp://w2:1" and slow["epoch"] == 1
    assert slow["message"].startswith("rank 2 on tcp://w2:1: compute 19% slower than the median")
    _rank_timed(record, 1, 0, "tcp://w0:1", {"compute": 0.01, **seconds})  # the next epoch, its first report
    assert [e["epoch"] for e in record.step_times] == [1, 2] and record.stragglers == []
