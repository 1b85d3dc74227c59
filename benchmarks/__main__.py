"""The whole benchmark suite in one command: dtrain side by side with its peers, one report.

    python -m benchmarks                          # full suite, 3 rounds (several minutes on 2 cores)
    python -m benchmarks --quick                  # tiny network, few steps, 1 round: checks the suite (~1 min)
    python -m benchmarks --rounds 5 --max-workers 2 --out benchmarks/results

Writes into ``--out`` (default benchmarks/results): ``suite.json`` (every figure, per round
and as medians, with the command, machine and date), ``suite.md`` (the report: tables and each
target, met or not) and ``suite_*.png`` (plots). ``python -m benchmarks.report suite.json``
re-renders the report and plots without measuring again.

Sections, each measured in fresh processes, dtrain and its peer one after the other in every
round (the machine is shared and noisy: compare the ratios, not the absolute times):

- ``single_process``: one training step against PyTorch using all cores
  (``python -m benchmarks.single_process``);
- ``scaling``: dtrain on 1..``--max-workers`` Dask workers x 1 thread against PyTorch with as
  many ranks (``benchmarks.scaling``, which uses ``benchmarks.distributed``'s measurement),
  from which ``distributed`` (1 and 2 workers against PyTorch 1 rank / DDP 2 ranks) and
  ``breakdown`` (compute, communication, waiting and overhead of a 2-worker step) are taken;
- ``allreduce``: 2 workers, 8 KiB .. 64 MiB (and 40 MiB, the target's size) against a raw
  loopback socket moving the same bytes one way and both ways at once
  (``python -m benchmarks.allreduce``);
- ``memory``: ``benchmarks.memory.run()`` where that module exists;
- ``time_to_accuracy``: dtrain (1 process, 1 and 2 workers) and a PyTorch loop training
  ``dtrain.datasets.make_classification`` data until the validation accuracy reaches a target.

Without PyTorch (``pip install torch==2.13.0``) or with ``--no-peers`` the peers are skipped
with a note and the rest still runs. The exit status is 1 when a section failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report, scaling
from .single_process import DEFAULT_PEER, ROOT, _thread_env

ALLREDUCE_SIZES = ["8KiB", "64KiB", "512KiB", "4MiB", "16MiB", "40MiB", "64MiB"]  # 40 MiB: the target's size

# What each mode measures. The full settings are the targets' (784-1024-1024-10, float32, SGD,
# global batch 512); --quick keeps every section but makes each one tiny.
FULL = {
    "layers": "784,1024,1024,10",
    "batch": 512,
    "single_steps": 20,
    "single_warmup": 3,
    "dist_steps": 20,
    "peer_steps": 30,
    "allreduce_sizes": ALLREDUCE_SIZES,
    "allreduce_reps": 20,
    "tta": {
        "layers": "784,1024,1024,10",
        "batch": 512,
        "n_train": 16384,
        "n_val": 4096,
        "separation": 1.5,
        "target": 0.95,
        "max_epochs": 20,
        "learning_rate": 0.01,
        "seed": 0,
    },
}
QUICK = {
    "layers": "64,32,10",
    "batch": 64,
    "single_steps": 5,
    "single_warmup": 1,
    "dist_steps": 5,
    "peer_steps": 5,
    "allreduce_sizes": ALLREDUCE_SIZES,
    "allreduce_reps": 3,
    "tta": {
        "layers": "64,32,10",
        "batch": 128,
        "n_train": 2048,
        "n_val": 512,
        "separation": 1.0,
        "target": 0.95,
        "max_epochs": 15,
        "learning_rate": 0.05,
        "seed": 0,
    },
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _median(values: list[Any]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return round(statistics.median(values), 4) if values else None


def _run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Runs a measurement in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{proc.stderr.strip()[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"`{' '.join(cmd)}` printed nothing:\n{proc.stderr.strip()[-3000:]}")
    return json.loads(lines[-1])


def _peer_status(no_peers: bool) -> tuple[Path | None, str | None]:
    if no_peers:
        return None, "peers skipped (--no-peers): PyTorch figures and the targets against them are not measured"
    if not DEFAULT_PEER.exists():
        return (
            None,
            f"PyTorch peer script not found ({DEFAULT_PEER}): peers skipped, their figures and targets not measured",
        )
    if importlib.util.find_spec("torch") is None:
        return (
            None,
            "PyTorch is not installed (pip install torch==2.13.0): peers skipped, their figures and targets not measured",
        )
    return DEFAULT_PEER, None


# -- sections ------------------------------------------------------------------------------------


def section_single_process(cfg: dict, rounds: int, threads: int, peer: Path | None) -> dict[str, Any]:
    """``python -m benchmarks.single_process`` (its own rounds, dtrain then the peer in each)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "single_process.json"
        args = [
            "--layers",
            cfg["layers"],
            "--batch",
            str(cfg["batch"]),
            "--threads",
            str(threads),
            "--steps",
            str(cfg["single_steps"]),
            "--warmup",
            str(cfg["single_warmup"]),
            "--rounds",
            str(rounds),
        ]
        # A peer path that does not exist makes single_process skip the peer (its own check).
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.single_process",
            *args,
            "--peer",
            str(peer or Path(tmp) / "no-peer"),
            "--out",
            str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(
                f"benchmarks.single_process exited with {proc.returncode}:\n{proc.stderr.strip()[-3000:]}"
            )
        data = json.loads(out.read_text())
    notes = [line.removeprefix("note: ") for line in proc.stderr.splitlines() if line.startswith("note:")]
    return {
        "command": "python -m benchmarks.single_process " + " ".join(args),
        "layers": data["layers"],
        "batch": data["batch"],
        "threads": data["threads"],
        "steps": cfg["single_steps"],
        "warmup": cfg["single_warmup"],
        "peer": f"torch_mlp.py --threads {threads}" if peer else None,
        "note": "; ".join(notes) or None,
        "rounds": data["rounds"],
        "median": data["median"],
    }


def section_scaling(cfg: dict, rounds: int, workers: list[int], peer: Path | None) -> dict[str, Any]:
    return scaling.measure(
        workers, rounds, cfg["layers"], cfg["batch"], cfg["dist_steps"], cfg["peer_steps"], peer, log=log
    )


def section_distributed(sc: dict) -> dict[str, Any]:
    """1 and 2 workers against PyTorch with as many ranks, taken from the scaling rounds."""
    rows = []
    for r in sc["rounds"]:
        d, p = r["dtrain"], r.get("peer", {})
        rows.append(
            {
                "round": r["round"],
                "dtrain_1w": d["1"]["samples_per_s"],
                "peer_1r": p.get("1", {}).get("samples_per_s"),
                "ratio_1w_vs_peer": r.get("ratio_vs_peer", {}).get("1"),
                "dtrain_2w": d.get("2", {}).get("samples_per_s"),
                "peer_2r": p.get("2", {}).get("samples_per_s"),
                "ratio_2w_vs_ddp": r.get("ratio_vs_peer", {}).get("2"),
                "efficiency_2w": r.get("efficiency", {}).get("2"),
                "peer_efficiency_2r": r.get("peer_efficiency", {}).get("2"),
            }
        )
    keys = [k for k in rows[0] if k != "round"]
    return {
        "layers": sc["layers"],
        "global_batch": sc["global_batch"],
        "workers": [1, 2],
        "threads_per_worker": 1,
        "peer": "`torch_mlp.py --world 1 --threads 1` (1 rank, no DDP wrapper) and `--world 2` (DDP over gloo, 1 thread per rank)"
        if sc.get("peer")
        else None,
        "note": sc.get("peer_note"),
        "rounds": rows,
        "median": {k: _median([row[k] for row in rows]) for k in keys},
    }


def section_breakdown(sc: dict) -> dict[str, Any]:
    parts = ("step_ms", "compute_ms", "communication_ms", "waiting_ms", "overhead_ms")
    rows = [
        {"round": r["round"], **{p: r["dtrain"]["2"].get(p) for p in parts}} for r in sc["rounds"] if "2" in r["dtrain"]
    ]
    if not rows:
        raise RuntimeError("no 2-worker run to break down")
    return {
        "workers": 2,
        "layers": sc["layers"],
        "global_batch": sc["global_batch"],
        "rounds": rows,
        "median": {p: _median([row[p] for row in rows]) for p in parts},
    }


def section_allreduce(cfg: dict, rounds: int) -> dict[str, Any]:
    from dask.utils import parse_bytes

    sizes = cfg["allreduce_sizes"]
    args = ["--workers", "2", "--sizes", *sizes, "--raw-sizes", *sizes, "--reps", str(cfg["allreduce_reps"])]
    runs = []
    for r in range(rounds):
        runs.append(_run_child([sys.executable, "-m", "benchmarks.allreduce", *args]))
        big = runs[-1]["allreduce_ms"].get("40MiB")
        log(f"allreduce round {r + 1}: 40 MiB {big} ms, raw one way {runs[-1]['raw_oneway_ms'].get('40MiB')} ms")
    per_size = {}
    for label in sizes:
        mine = [run["allreduce_ms"].get(label) for run in runs]
        oneway = [run["raw_oneway_ms"].get(label) for run in runs]
        both = [run["raw_exchange_ms"].get(label) for run in runs]
        per_size[label] = {
            "allreduce_ms": _median(mine),
            "raw_oneway_ms": _median(oneway),
            "raw_exchange_ms": _median(both),
            "ratio_vs_oneway": _median([a / b for a, b in zip(mine, oneway) if a and b]),
            "ratio_vs_exchange": _median([a / b for a, b in zip(mine, both) if a and b]),
        }
    return {
        "command": "python -m benchmarks.allreduce " + " ".join(args),
        "workers": 2,
        "reps": cfg["allreduce_reps"],
        "sizes": sizes,
        "bytes": {label: parse_bytes(label) for label in sizes},
        "rounds": runs,
        "per_size": per_size,
    }


def section_memory(quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("benchmarks.memory") is None:
        return {"available": False, "note": "memory: not available (benchmarks/memory.py is not there)"}
    cmd = [sys.executable, "-m", "benchmarks", "--child", "memory", "--child-args", json.dumps({"quick": quick})]
    try:
        result = _run_child(cmd)
    except Exception as exc:  # the section fails, the suite goes on
        return {"available": True, "error": str(exc)[-3000:], "note": "benchmarks.memory.run() failed"}
    return {"available": True, "note": f"benchmarks.memory.run(quick={quick}) in a fresh process", "result": result}


def section_time_to_accuracy(cfg: dict, rounds: int, threads: int, peer: Path | None) -> dict[str, Any]:
    t = cfg["tta"]
    systems = [
        ("dtrain, 1 process", {"system": "dtrain", "workers": 0}),
        ("dtrain, 1 worker", {"system": "dtrain", "workers": 1}),
        ("dtrain, 2 workers", {"system": "dtrain", "workers": 2}),
    ]
    notes = []
    if peer is not None:
        systems.append(("PyTorch, 1 process", {"system": "torch", "workers": 0}))
        notes.append(
            "PyTorch starts from its own default initialisation (dtrain from its own), so the epochs to the target "
            "may differ; the seconds per epoch compare the systems' speed."
        )
    else:
        notes.append("PyTorch not measured (peers skipped).")
    env = _thread_env(threads)  # the single processes use all cores; Dask's nannies pin each worker to 1 thread
    out_rounds = []
    for r in range(rounds):
        results = {}
        for label, system in systems:
            child = dict(t, **system, threads=threads)
            results[label] = _run_child(
                [sys.executable, "-m", "benchmarks", "--child", "tta", "--child-args", json.dumps(child)], env=env
            )
            log(
                f"time to accuracy round {r + 1}: {label}: {results[label]['seconds']} s, {results[label]['epochs']} epochs"
            )
        out_rounds.append({"round": r + 1, "results": results})
    summary = {}
    for label, _ in systems:
        runs = [rr["results"][label] for rr in out_rounds]
        reached = [run for run in runs if run["reached"]]
        summary[label] = {
            "runs": len(runs),
            "reached": len(reached),
            "epochs": _median([run["epochs"] for run in reached]),
            "seconds": _median([run["seconds"] for run in reached]),
            "seconds_per_round": [run["seconds"] if run["reached"] else None for run in runs],
            "seconds_per_epoch": _median([run["seconds"] / run["epochs"] for run in reached if run["epochs"]]),
            "final_val_accuracy": _median([run["final_val_accuracy"] for run in runs]),
            "startup_s": _median([run.get("startup_s") for run in runs]),
        }
    return {
        "layers": t["layers"],
        "batch": t["batch"],
        "learning_rate": t["learning_rate"],
        "target_accuracy": t["target"],
        "max_epochs": t["max_epochs"],
        "threads": threads,
        "problem": {
            "generator": "dtrain.datasets.make_classification",
            "n_train": t["n_train"],
            "n_val": t["n_val"],
            "features": int(t["layers"].split(",")[0]),
            "classes": int(t["layers"].split(",")[-1]),
            "separation": t["separation"],
            "seed": t["seed"],
        },
        "notes": notes,
        "rounds": out_rounds,
        "summary": summary,
    }


# -- children (fresh processes) ------------------------------------------------------------------


def _tta_data(c: dict):
    from dtrain.datasets import make_classification

    layers = [int(s) for s in c["layers"].split(",")]
    x, y = make_classification(
        c["n_train"] + c["n_val"], layers[0], layers[-1], separation=c["separation"], one_hot=False, seed=c["seed"]
    )
    n = c["n_train"]
    return layers, (x[:n], y[:n]), (x[n:], y[n:])


def child_tta(c: dict) -> dict[str, Any]:
    """Trains until the validation accuracy reaches c["target"]; seconds from the start of training."""
    layers, (x, y), (xv, yv) = _tta_data(c)
    if c["system"] == "torch":
        return _tta_torch(c, layers, x, y, xv, yv)
    return _tta_dtrain(c, layers, x, y, xv, yv)


def _tta_dtrain(c, layers, x, y, xv, yv) -> dict[str, Any]:
    import contextlib

    from dtrain.callbacks import Callback
    from dtrain.optimizers import SGD

    from .single_process import build_mlp

    curve: list[list[float]] = []
    clock = {"start": 0.0}

    class StopAtTarget(Callback):
        def on_epoch_end(self, epoch, logs=None):
            acc = float(logs["val_accuracy"])
            curve.append([epoch + 1, round(time.perf_counter() - clock["start"], 3), round(acc, 4)])
            if acc >= c["target"]:
                self.model.stop_training = True

    model = build_mlp(layers)
    model.compile(
        optimizer=SGD(learning_rate=c["learning_rate"]), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    startup = 0.0
    with contextlib.ExitStack() as stack:
        client = None
        if c["workers"]:
            from distributed import Client

            from dtrain.clusters import local_cluster

            begin = time.perf_counter()
            cluster = stack.enter_context(local_cluster(c["workers"], dashboard_address=":0"))
            client = stack.enter_context(Client(cluster))
            client.wait_for_workers(c["workers"])
            startup = time.perf_counter() - begin
        clock["start"] = time.perf_counter()
        model.fit(
            x,
            y,
            batch_size=c["batch"],
            epochs=c["max_epochs"],
            verbose=0,
            seed=c["seed"],
            shards=2,
            validation_data=(xv, yv),
            callbacks=[StopAtTarget()],
            client=client,
        )
        fit_s = time.perf_counter() - clock["start"]
    return _tta_result(c, curve, fit_s, startup)


def _tta_torch(c, layers, x, y, xv, yv) -> dict[str, Any]:
    import torch

    torch.set_num_threads(c["threads"])
    torch.manual_seed(c["seed"])
    mods: list = []
    for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
        mods.append(torch.nn.Linear(a, b))
        if i < len(layers) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.SGD(model.parameters(), lr=c["learning_rate"])
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    xvt, yvt = torch.from_numpy(xv), torch.from_numpy(yv).long()
    gen = torch.Generator().manual_seed(c["seed"])
    steps = len(xt) // c["batch"]
    curve: list[list[float]] = []
    start = time.perf_counter()
    for epoch in range(c["max_epochs"]):
        order = torch.randperm(len(xt), generator=gen)
        for s in range(steps):
            rows = order[s * c["batch"] : (s + 1) * c["batch"]]
            opt.zero_grad()
            loss_fn(model(xt[rows]), yt[rows]).backward()
            opt.step()
        with torch.no_grad():
            acc = float((model(xvt).argmax(dim=1) == yvt).float().mean())
        curve.append([epoch + 1, round(time.perf_counter() - start, 3), round(acc, 4)])
        if acc >= c["target"]:
            break
    return _tta_result(c, curve, time.perf_counter() - start, 0.0)


def _tta_result(c: dict, curve: list[list[float]], fit_s: float, startup: float) -> dict[str, Any]:
    hit = next((point for point in curve if point[2] >= c["target"]), None)
    return {
        "reached": hit is not None,
        "epochs": hit[0] if hit else None,
        "seconds": hit[1] if hit else None,
        "final_val_accuracy": curve[-1][2] if curve else None,
        "fit_s": round(fit_s, 3),
        "startup_s": round(startup, 3),
        "curve": curve,
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def child_memory(c: dict) -> dict[str, Any]:
    from benchmarks.memory import run

    return run(quick=bool(c.get("quick")))


# -- the suite -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    info: dict[str, Any] = {"cpus": os.cpu_count(), "cores": scaling.cores(), "platform": platform.platform()}
    try:
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        info["cpu_model"] = platform.processor() or None
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    versions = {"python": platform.python_version()}
    for dist in ("dtrain", "numpy", "dask", "distributed", "torch", "matplotlib"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = "not installed"
    info["versions"] = versions
    info["load_start"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return info


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny network, few steps, 1 round: checks that the suite works")
    p.add_argument("--rounds", type=int, default=None, help="rounds per section (default 3, 1 with --quick)")
    p.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder for suite.json, suite.md, suite_*.png"
    )
    p.add_argument(
        "--max-workers", type=int, default=None, help="scaling curve up to this many workers (default: the cores)"
    )
    p.add_argument("--no-peers", action="store_true", help="skip the PyTorch peers even when torch is installed")
    p.add_argument(
        "--sections",
        nargs="+",
        choices=["single_process", "scaling", "allreduce", "memory", "time_to_accuracy"],
        default=None,
        help="run only these sections (scaling also gives distributed and breakdown)",
    )
    p.add_argument("--child", choices=["tta", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.max_workers is not None and args.max_workers < 1:
        p.error("--max-workers must be at least 1")
    return args


def run_suite(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    cfg = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    threads = scaling.cores()
    max_workers = args.max_workers or threads
    workers = sorted(set(range(1, max_workers + 1)) | {1, 2})  # 1 and 2 always: the distributed section
    peer, peer_note = _peer_status(args.no_peers)
    wanted = args.sections or ["single_process", "scaling", "allreduce", "memory", "time_to_accuracy"]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    suite: dict[str, Any] = {
        "suite": "dtrain benchmarks",
        "format": 1,
        "command": "python -m benchmarks" + ("" if not argv else " " + " ".join(argv)),
        "quick": args.quick,
        "rounds": rounds,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "machine": machine_info(),
        "settings": {
            "network": cfg["layers"].replace(",", "-") + " (relu, softmax)",
            "dtype": "float32",
            "optimizer": "SGD",
            "global batch": cfg["batch"],
            "rounds": rounds,
            "single-process threads": threads,
            "workers": workers,
            "threads per worker": 1,
            "PyTorch peers": "yes" if peer else "no",
        },
        "notes": [peer_note] if peer_note else [],
        "sections": {},
    }
    sections = suite["sections"]

    def save() -> None:
        suite["targets"] = report.evaluate_targets(suite)
        (out / "suite.json").write_text(json.dumps(suite, indent=1, default=_jsonable) + "\n")

    def attempt(name: str, fn, *fn_args) -> dict | None:
        log(f"{name}: starting")
        t0 = time.perf_counter()
        try:
            sections[name] = fn(*fn_args)
        except Exception as exc:
            log(f"{name}: FAILED: {exc}")
            sections[name] = {"error": f"{type(exc).__name__}: {exc}"[-3000:]}
        sections[name]["section_s"] = round(time.perf_counter() - t0, 1)
        log(f"{name}: done in {sections[name]['section_s']} s")
        save()
        return sections[name] if "error" not in sections[name] else None

    if "single_process" in wanted:
        attempt("single_process", section_single_process, cfg, rounds, threads, peer)
    if "scaling" in wanted:
        sc = attempt("scaling", section_scaling, cfg, rounds, workers, peer)
        for name, fn in (("distributed", section_distributed), ("breakdown", section_breakdown)):
            if sc is not None:
                attempt(name, fn, sc)
            else:
                sections[name] = {"error": "the scaling runs it is taken from failed"}
    if "allreduce" in wanted:
        attempt("allreduce", section_allreduce, cfg, rounds)
    if "memory" in wanted:
        attempt("memory", section_memory, args.quick)
    if "time_to_accuracy" in wanted:
        attempt("time_to_accuracy", section_time_to_accuracy, cfg, rounds, threads, peer)

    suite["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    suite["wall_s"] = round(time.perf_counter() - began, 1)
    suite["machine"]["load_end"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    save()
    rendered = report.render(suite, out)
    suite["plots"] = [Path(p).name for p in rendered["plots"]]
    save()
    return suite


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:  # a fresh process measuring one thing: its last stdout line is the JSON result
        fn = {"tta": child_tta, "memory": child_memory}[args.child]
        print(json.dumps(fn(json.loads(args.child_args)), default=_jsonable), flush=True)
        return 0
    suite = run_suite(args, argv)
    print(
        f"\nwritten {args.out / 'suite.json'}, {args.out / 'suite.md'}"
        + "".join(f", {args.out / p}" for p in suite.get("plots", []))
    )
    print(f"wall time {suite['wall_s']} s\n")
    for t in suite["targets"]:
        print(
            f"{report.verdict(t['met']).strip('*'):>12}  {t['name']}: {report._fmt_target_value(t['value'], t['unit'])}"
        )
    failed = [name for name, s in suite["sections"].items() if isinstance(s, dict) and s.get("error")]
    if failed:
        print(f"\nsections that failed: {', '.join(failed)} (see suite.md)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
