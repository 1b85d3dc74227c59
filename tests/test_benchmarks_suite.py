"""The benchmark suite (`python -m benchmarks`): its report renders from suite.json with the right
verdicts (fast, hand-made figures), and a --quick run writes every section, the report and real
PNG plots (slow: it starts clusters and the peers, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `benchmarks` lives beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("single_process", "distributed", "breakdown", "allreduce", "memory", "scaling", "time_to_accuracy")


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return (
        data[:8] == PNG_MAGIC
        and b"IHDR" in data[:32]
        and data.rstrip().endswith(b"IEND\xaeB`\x82")
        and len(data) > 1000
    )


def _suite(single_ratio=0.93, ddp_ratio=1.15, efficiency=0.84, ar_ratio=1.31, memory=None, peers=True) -> dict:
    """A suite.json as `python -m benchmarks` writes it, with chosen figures."""
    torch_ms = 31.0 if peers else None
    allreduce_sizes = {"8KiB": 8192, "40MiB": 40 * 2**20, "64MiB": 64 * 2**20}
    return {
        "suite": "dtrain benchmarks",
        "format": 1,
        "command": "python -m benchmarks --rounds 1",
        "quick": False,
        "rounds": 1,
        "started": "2026-11-21 12:00:00 UTC",
        "finished": "2026-11-21 12:05:00 UTC",
        "wall_s": 300.0,
        "commit": "abc1234",
        "machine": {
            "cpus": 2,
            "cores": 2,
            "cpu_model": "Test CPU",
            "memory_gib": 16.0,
            "platform": "Linux",
            "versions": {"python": "3.11", "numpy": "2"},
            "load_start": [1.0, 1.0, 1.0],
            "load_end": [2.0, 1.5, 1.0],
        },
        "settings": {"network": "784-1024-1024-10 (relu, softmax)", "global batch": 512},
        "notes": [] if peers else ["PyTorch is not installed: peers skipped"],
        "sections": {
            "single_process": {
                "command": "python -m benchmarks.single_process",
                "layers": "784,1024,1024,10",
                "batch": 512,
                "threads": 2,
                "steps": 20,
                "rounds": [
                    {
                        "round": 1,
                        "dtrain_step_ms": 29.0,
                        "dtrain_fit_step_ms": 30.0,
                        **({"torch_step_ms": torch_ms, "ratio_step": single_ratio, "ratio_fit": 0.97} if peers else {}),
                    }
                ],
                "median": {
                    "dtrain_step_ms": 29.0,
                    "dtrain_fit_step_ms": 30.0,
                    **({"torch_step_ms": torch_ms, "ratio_step": single_ratio, "ratio_fit": 0.97} if peers else {}),
                },
            },
            "distributed": {
                "layers": "784,1024,1024,10",
                "global_batch": 512,
                "peer": "DDP" if peers else None,
                "rounds": [
                    {
                        "round": 1,
                        "dtrain_1w": 9000.0,
                        "dtrain_2w": 9000.0 * 2 * efficiency,
                        "efficiency_2w": efficiency,
                        "ratio_2w_vs_ddp": ddp_ratio if peers else None,
                    }
                ],
                "median": {
                    "dtrain_1w": 9000.0,
                    "dtrain_2w": 9000.0 * 2 * efficiency,
                    "efficiency_2w": efficiency,
                    "ratio_2w_vs_ddp": ddp_ratio if peers else None,
                },
            },
            "breakdown": {
                "workers": 2,
                "rounds": [
                    {
                        "round": 1,
                        "step_ms": 40.0,
                        "compute_ms": 31.0,
                        "communication_ms": 3.0,
                        "waiting_ms": 1.0,
                        "overhead_ms": 0.5,
                    }
                ],
                "median": {
                    "step_ms": 40.0,
                    "compute_ms": 31.0,
                    "communication_ms": 3.0,
                    "waiting_ms": 1.0,
                    "overhead_ms": 0.5,
                },
            },
            "allreduce": {
                "workers": 2,
                "reps": 20,
                "command": "python -m benchmarks.allreduce",
                "sizes": list(allreduce_sizes),
                "bytes": allreduce_sizes,
                "per_size": {
                    label: {
                        "allreduce_ms": n / 2**20 * 0.3 + 0.3,
                        "raw_oneway_ms": n / 2**20 * 0.3,
                        "raw_exchange_ms": n / 2**20 * 0.5,
                        "ratio_vs_oneway": ar_ratio,
                        "ratio_vs_exchange": 0.6,
                    }
                    for label, n in allreduce_sizes.items()
                },
            },
            "memory": memory or {"available": False, "note": "memory: not available"},
            "scaling": {
                "layers": "784,1024,1024,10",
                "global_batch": 512,
                "workers": [1, 2],
                "per_workers": {
                    "1": {
                        "workers": 1,
                        "dtrain_samples_per_s": 9000.0,
                        "efficiency": 1.0,
                        "peer_samples_per_s": 10000.0 if peers else None,
                    },
                    "2": {
                        "workers": 2,
                        "dtrain_samples_per_s": 9000.0 * 2 * efficiency,
                        "efficiency": efficiency,
                        "peer_samples_per_s": 13000.0 if peers else None,
                    },
                },
            },
            "time_to_accuracy": {
                "layers": "784,1024,1024,10",
                "batch": 512,
                "target_accuracy": 0.95,
                "max_epochs": 20,
                "problem": {
                    "n_train": 16384,
                    "n_val": 4096,
                    "features": 784,
                    "classes": 10,
                    "separation": 1.5,
                    "seed": 0,
                },
                "rounds": [
                    {
                        "round": 1,
                        "results": {
                            "dtrain, 2 workers": {
                                "reached": True,
                                "epochs": 4,
                                "seconds": 6.0,
                                "curve": [[1, 1.5, 0.4], [2, 3.0, 0.7], [3, 4.5, 0.9], [4, 6.0, 0.97]],
                            }
                        },
                    }
                ],
                "summary": {
                    "dtrain, 2 workers": {
                        "runs": 1,
                        "reached": 1,
                        "epochs": 4,
                        "seconds": 6.0,
                        "seconds_per_round": [6.0],
                        "final_val_accuracy": 0.97,
                    }
                },
            },
        },
    }


def _by_id(targets: list[dict]) -> dict[str, dict]:
    return {t["id"]: t for t in targets}


def _row(markdown: str, name: str) -> str:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {name} |")]
    assert len(rows) == 1, (name, rows)
    return rows[0]


def test_targets_are_judged_from_the_figures_on_both_sides_of_each_threshold():
    # On the threshold counts as met; just past it does not; each in its own direction.
    t = _by_id(report.evaluate_targets(_suite(single_ratio=1.0, ddp_ratio=1.15, efficiency=0.84, ar_ratio=1.31)))
    assert (
        t["single_step"]["met"],
        t["ddp_throughput"]["met"],
        t["scaling_efficiency"]["met"],
        t["allreduce_40MiB"]["met"],
    ) == (True, True, False, False)
    t = _by_id(report.evaluate_targets(_suite(single_ratio=1.01, ddp_ratio=1.14, efficiency=0.85, ar_ratio=1.3)))
    assert (
        t["single_step"]["met"],
        t["ddp_throughput"]["met"],
        t["scaling_efficiency"]["met"],
        t["allreduce_40MiB"]["met"],
    ) == (False, False, True, True)
    assert t["ddp_throughput"]["value"] == pytest.approx(1.14) and t["scaling_efficiency"]["value"] == pytest.approx(
        0.85
    )
    # Nothing from the memory section: not measured, never "met".
    assert t["memory_growth"]["met"] is None and t["peak_rss"]["met"] is None
    assert "not available" in t["memory_growth"]["note"]


def test_without_peers_the_targets_against_them_are_not_measured():
    t = _by_id(report.evaluate_targets(_suite(peers=False)))
    assert t["single_step"]["met"] is None and t["ddp_throughput"]["met"] is None
    assert t["scaling_efficiency"]["met"] is False  # dtrain-only targets are still judged
    md = report.render_markdown(_suite(peers=False))
    assert "not measured" in _row(md, "Single process: dtrain step time <= 1.0x PyTorch's (all cores)")
    assert "peers skipped" in md


def test_memory_targets_use_benchmarks_memory_figures_and_verdicts():
    memory = {
        "available": True,
        "result": {
            "network": {"layers": [784, 1024, 1024, 10], "global_batch": 512},
            "targets": {
                "peak_rss_within_1.2x_of_bound": {
                    "met": True,
                    "limit": 1.2,
                    "ratios": {"single_process.sgd": 1.05, "cluster.rank0": 1.11},
                },
                "no_per_step_growth": {
                    "met": False,
                    "slope_limit_bytes_per_step": 4096,
                    "rss_slope_bytes_per_step": {"single_process.sgd": 12.0, "cluster.rank0": -9000.0},
                },
                "not_measured": [],
            },
        },
    }
    t = _by_id(report.evaluate_targets(_suite(memory=memory)))
    assert (
        t["peak_rss"]["met"] is True
        and t["peak_rss"]["value"] == pytest.approx(1.11)
        and t["peak_rss"]["threshold"] == 1.2
    )
    assert t["memory_growth"]["met"] is False and t["memory_growth"]["value"] == pytest.approx(9000.0)
    assert t["memory_growth"]["threshold"] == 4096
    # Figures alone (no verdict of its own): judged here against its limit.
    memory["result"]["targets"]["no_per_step_growth"].pop("met")
    memory["result"]["targets"]["peak_rss_within_1.2x_of_bound"].pop("met")
    memory["result"]["targets"]["peak_rss_within_1.2x_of_bound"]["ratios"]["cluster.rank1"] = 1.25
    t = _by_id(report.evaluate_targets(_suite(memory=memory)))
    assert t["memory_growth"]["met"] is False and t["peak_rss"]["met"] is False
    memory["result"]["targets"]["no_per_step_growth"]["rss_slope_bytes_per_step"]["cluster.rank0"] = 100.0
    assert _by_id(report.evaluate_targets(_suite(memory=memory)))["memory_growth"]["met"] is True


def test_report_renders_markdown_and_real_pngs_from_a_suite_json(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps(_suite(single_ratio=0.93, ddp_ratio=1.2, efficiency=0.8, ar_ratio=0.95)))
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "suite.md").read_text()
    for name, expected in (
        ("Single process: dtrain step time <= 1.0x PyTorch's (all cores)", "**met**"),
        ("2 workers x 1 thread: throughput >= 1.15x PyTorch DDP with 2 ranks", "**met**"),
        ("2 workers: scaling efficiency >= 85% of 1 worker", "**not met**"),
        ("Allreduce of 40 MiB between 2 workers <= 1.3x a raw socket", "**met**"),
        ("No per-step memory growth", "not measured"),
        ("Peak RSS <= 1.2x the computed bound", "not measured"),
    ):
        row = _row(md, name)
        assert row.rstrip(" |").endswith(expected), row
    assert "| 80.0% | >= 85.0% |" in _row(md, "2 workers: scaling efficiency >= 85% of 1 worker")
    for text in (
        "python -m benchmarks --rounds 1",
        "Test CPU",
        "2026-11-21 12:00:00",
        "abc1234",
        "memory: not available",
    ):
        assert text in md
    for name in report.PLOTS.values():
        assert _is_png(tmp_path / "out" / name), name
        assert f"]({name})" in md


@pytest.mark.slow
@pytest.mark.cluster
def test_quick_suite_writes_every_section_the_report_and_plots(tmp_path):
    out = tmp_path / "results"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    suite = json.loads((out / "suite.json").read_text())
    assert suite["quick"] is True and suite["rounds"] == 1
    for key in ("command", "machine", "started", "finished", "wall_s", "targets"):
        assert suite.get(key), key
    for name in SECTIONS:
        section = suite["sections"].get(name)
        assert isinstance(section, dict) and not section.get("error"), (name, section)
    sections = suite["sections"]
    assert set(sections["allreduce"]["per_size"]) >= {"8KiB", "64KiB", "512KiB", "4MiB", "16MiB", "40MiB", "64MiB"}
    for label, figures in sections["allreduce"]["per_size"].items():
        assert figures["allreduce_ms"] > 0 and figures["raw_oneway_ms"] > 0 and figures["raw_exchange_ms"] > 0, label
    assert {"1", "2"} <= set(sections["scaling"]["per_workers"])
    assert sections["breakdown"]["median"]["compute_ms"] > 0
    tta = sections["time_to_accuracy"]["summary"]
    assert {"dtrain, 1 process", "dtrain, 1 worker", "dtrain, 2 workers"} <= set(tta)
    assert all(
        tta[label]["reached"] == 1 and tta[label]["epochs"] >= 2 for label in tta if label.startswith("dtrain")
    ), tta
    memory = sections["memory"]
    assert memory.get("result") or memory.get("note") == "memory: not available (benchmarks/memory.py is not there)"
    # The targets in suite.json are those the report judges, each with a verdict or "not measured".
    assert [t["id"] for t in suite["targets"]] == [t.id for t in report.TARGETS]
    md = (out / "suite.md").read_text()
    for target in report.TARGETS:
        assert target.name in md
    for name in report.PLOTS.values():
        assert _is_png(out / name), name
    assert sorted(suite["plots"]) == sorted(report.PLOTS.values())
    assert wall < 300, f"--quick took {wall:.0f} s"
