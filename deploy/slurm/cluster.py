#!/usr/bin/env python3
"""dtrain on a SLURM cluster's GPU nodes, with dask-jobqueue.

This process runs the Dask scheduler, with dtrain's job service preloaded; each SLURM job it
submits runs one single-threaded Dask worker on one GPU (``--gres=gpu:1``: SLURM sets
CUDA_VISIBLE_DEVICES to that GPU, so dtrain's ``device: auto`` trains on it).

    pip install "dtrain[gpu]" dask-jobqueue          # in an environment every node sees
    python deploy/slurm/cluster.py --jobs 4 --partition gpu --account myproject
    # prints the scheduler's address; then, from any machine that reaches it:
    dtrain submit job.yaml --scheduler tcp://LOGIN-NODE:8786
    # or: cluster.py ... --scheduler-file ~/dtrain-scheduler.json; dtrain submit job.yaml --scheduler-file ~/dtrain-scheduler.json
    python deploy/slurm/cluster.py --jobs 4 --print-job-script   # the sbatch script, nothing submitted

The scheduler lives as long as this process (run it in tmux/screen, or as a small SLURM job of
its own); Ctrl-C cancels the worker jobs and stops it. Job outputs (``output.dir``) must be on
a file system that this machine and the GPU nodes share, or an object store URL.

The dashboard is this process's scheduler's, on 127.0.0.1:8787 (``--dashboard-address``):
from your machine, ``ssh -L 8787:127.0.0.1:8787 LOGIN-NODE`` and open
http://127.0.0.1:8787/dtrain (dtrain's page: jobs, curves, per-rank step times; Dask's own is
/status). It is plain HTTP, also with ``--tls-dir`` (see deploy/README.md).

Security: whoever reaches the scheduler can run code on the GPU nodes as you. The dashboard is
on 127.0.0.1 only; use ``--tls-dir`` (the certificates from deploy/docker/make-certs.sh) so
that only holders of a certificate from your CA can connect to the scheduler.

From Python: ``make_cluster(jobs=..., ...)`` returns the ``SLURMCluster``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PRELOAD = "dtrain.jobs.service"
DTRAIN_PAGE = "/dtrain"  # dtrain's page on the scheduler's dashboard (Dask's own: /status)


def dtrain_page(dashboard_link: str) -> str:
    """dtrain's page on the dashboard whose link is ``dashboard_link`` (``cluster.dashboard_link``,
    Dask's ``http://HOST:8787/status``): ``http://HOST:8787/dtrain``."""
    parts = urlsplit(dashboard_link)
    return f"{parts.scheme}://{parts.netloc}{DTRAIN_PAGE}"


def tls_security(tls_dir: str | Path):
    """A ``distributed.Security`` from make-certs.sh's folder: ca.pem and each role's certificate.
    The scheduler's own client (dtrain's job threads run as clients inside it) uses the
    scheduler's certificate; workers use worker.pem (written into the job script by path, so the
    folder must be on a shared file system, readable by you only)."""
    from distributed.security import Security

    d = Path(tls_dir).resolve()
    missing = [
        name
        for name in ("ca.pem", "scheduler.pem", "scheduler-key.pem", "worker.pem", "worker-key.pem")
        if not (d / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{d} lacks {', '.join(missing)} (make them with deploy/docker/make-certs.sh)")
    return Security(
        tls_ca_file=str(d / "ca.pem"),
        tls_scheduler_cert=str(d / "scheduler.pem"),
        tls_scheduler_key=str(d / "scheduler-key.pem"),
        tls_worker_cert=str(d / "worker.pem"),
        tls_worker_key=str(d / "worker-key.pem"),
        tls_client_cert=str(d / "scheduler.pem"),
        tls_client_key=str(d / "scheduler-key.pem"),
        require_encryption=True,
    )


def make_cluster(
    *,
    jobs: int = 0,
    partition: str | None = None,
    account: str | None = None,
    walltime: str = "04:00:00",
    cpus_per_gpu: int = 8,
    memory: str = "64GB",
    gres: str = "gpu:1",
    interface: str | None = None,
    host: str | None = None,
    scheduler_port: int = 8786,
    dashboard_address: str = "127.0.0.1:8787",
    python: str | None = None,
    log_directory: str | None = None,
    job_extra_directives: list[str] | None = None,
    job_script_prologue: list[str] | None = None,
    tls_dir: str | Path | None = None,
    scheduler_file: str | Path | None = None,
    **kwargs: Any,
):
    """A ``dask_jobqueue.SLURMCluster`` for dtrain: its scheduler (in this process) has dtrain's
    job service; each SLURM job is one worker (``--nthreads 1``) on one GPU (``--gres=gpu:1``)
    with ``cpus_per_gpu`` CPU cores and ``memory``. ``jobs``: how many to submit now (0: none;
    ``cluster.scale(jobs=N)`` later). ``interface`` (e.g. ib0) or ``host``: where the scheduler
    and workers listen, as the GPU nodes reach them. ``python``: the interpreter the nodes run
    (default: this one). ``scheduler_file``: the scheduler writes its address there (Dask's
    scheduler file: ``dtrain submit --scheduler-file PATH`` from any node that sees it). Other
    keyword arguments go to ``SLURMCluster``."""
    from dask_jobqueue import SLURMCluster

    from dtrain.clusters import training_environment

    security = tls_security(tls_dir) if tls_dir else None
    scheduler_options: dict[str, Any] = {
        "preload": [PRELOAD],  # the job service is there from the start
        "port": scheduler_port,
        "dashboard_address": dashboard_address,
    }
    if scheduler_file:
        scheduler_options["scheduler_file"] = str(scheduler_file)
    if host:
        scheduler_options["host"] = host
    elif interface:
        scheduler_options["interface"] = interface
    cluster = SLURMCluster(
        queue=partition,
        account=account,
        walltime=walltime,
        cores=1,  # threads per worker: dtrain ranks are single-threaded
        processes=1,  # one worker per job, hence per GPU
        job_cpu=cpus_per_gpu,  # CPU cores booked for it (data loading, the host side)
        memory=memory,
        job_extra_directives=[f"--gres={gres}", *(job_extra_directives or [])],
        # Dask settings for training (dtrain.clusters), unless the nodes' environment sets them
        job_script_prologue=[
            *(f': "${{{name}:={value}}}"; export {name}' for name, value in training_environment({}).items()),
            *(job_script_prologue or []),
        ],
        interface=interface,
        python=python or sys.executable,
        log_directory=log_directory,
        scheduler_options=scheduler_options,
        security=security,
        protocol="tls://" if security else None,
        **kwargs,
    )
    if jobs:
        cluster.scale(jobs=jobs)
    return cluster


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cluster.py",
        description="Run a Dask scheduler with dtrain's job service here and GPU workers as "
        "SLURM jobs (dask-jobqueue): one job per GPU.",
    )
    parser.add_argument("--jobs", type=int, default=1, help="SLURM jobs (= GPUs = workers) to submit (default 1)")
    parser.add_argument("--partition", help="#SBATCH -p")
    parser.add_argument("--account", help="#SBATCH -A")
    parser.add_argument("--walltime", default="04:00:00", help="#SBATCH -t (default 04:00:00)")
    parser.add_argument("--cpus-per-gpu", type=int, default=8, help="CPU cores per job (default 8)")
    parser.add_argument("--memory", default="64GB", help="memory per job (default 64GB)")
    parser.add_argument("--gres", default="gpu:1", help="#SBATCH --gres (default gpu:1; e.g. gpu:a100:1)")
    parser.add_argument("--interface", help="network interface the nodes reach this machine on (e.g. ib0)")
    parser.add_argument("--host", help="address to listen on, instead of --interface")
    parser.add_argument("--scheduler-port", type=int, default=8786)
    parser.add_argument(
        "--dashboard-address",
        default="127.0.0.1:8787",
        help="where the dashboard listens (dtrain's page: /dtrain); default 127.0.0.1:8787 (not public)",
    )
    parser.add_argument("--python", help="the Python the nodes run (default: this one)")
    parser.add_argument("--log-directory", help="where the worker jobs' stdout/stderr go")
    parser.add_argument(
        "--prologue",
        action="append",
        default=[],
        metavar="LINE",
        help="a line run before the worker (repeatable), e.g. 'module load cuda/12'",
    )
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="DIRECTIVE",
        help="another #SBATCH directive (repeatable), e.g. --sbatch=--constraint=h100",
    )
    parser.add_argument(
        "--tls-dir", help="TLS: a folder with make-certs.sh's ca.pem, scheduler and worker certificates"
    )
    parser.add_argument(
        "--scheduler-file",
        metavar="PATH",
        help="write the scheduler's address to PATH (Dask's scheduler file; on a shared file system, "
        "`dtrain submit --scheduler-file PATH` works from any node)",
    )
    parser.add_argument(
        "--print-job-script", action="store_true", help="print the job script and exit (submits nothing)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cluster = make_cluster(
        jobs=0,
        partition=args.partition,
        account=args.account,
        walltime=args.walltime,
        cpus_per_gpu=args.cpus_per_gpu,
        memory=args.memory,
        gres=args.gres,
        interface=args.interface,
        host=args.host,
        scheduler_port=args.scheduler_port,
        dashboard_address=args.dashboard_address,
        python=args.python,
        log_directory=args.log_directory,
        job_extra_directives=args.sbatch,
        job_script_prologue=args.prologue,
        tls_dir=args.tls_dir,
        scheduler_file=args.scheduler_file,
    )
    try:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        print(cluster.scheduler_address, flush=True)
        print(
            f"  {args.jobs} SLURM job(s) of one GPU each; dtrain's page: {dtrain_page(cluster.dashboard_link)} "
            f"(Dask's dashboard: {cluster.dashboard_link}; from elsewhere: ssh -L PORT:127.0.0.1:PORT THIS-HOST)\n"
            f"  dtrain submit JOB --scheduler {cluster.scheduler_address}\n  Ctrl-C: cancel the jobs and stop",
            file=sys.stderr,
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
