"""The memory benchmark (benchmarks/memory.py, issue 6): its bound against a hand computation,
its per-step allocation probe (which must report 0 for dtrain and must see a deliberate leak),
and the shape of its report. Quick settings: a 20-16-3 network, seconds."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import memory

ROOT = Path(__file__).resolve().parent.parent

# -- the hand computation for the quick network 20 -> 16 (relu) -> 3 (softmax), float32 -----------
# Flat buffers: every array padded to 128 bytes = 32 float32 elements.
#   kernel 1: 20 x 16 = 320 elements -> 320;  bias 1: 16 -> 32
#   kernel 2: 16 x 3  =  48 elements -> 64;   bias 2:  3 -> 32
#   448 elements = 1792 bytes, for each of: parameters, gradients, optimizer scratch
FLAT_BYTES = 448 * 4
# One batch of 32 rows:
#   layer 1: z, a (32 x 16) = 2048 B each; no dx (nobody needs the gradient of the data)
#   layer 2: z, a (32 x 3) = 384 B each; dx (32 x 16) = 2048 B
#   dL/dlogits (32 x 3) = 384 B; gathered batch: x (32 x 20) = 2560 B, y 32 int64 = 256 B
BATCH_BYTES = {
    "layer 1 z (pre-activation)": 2048,
    "layer 1 a (output)": 2048,
    "layer 2 z (pre-activation)": 384,
    "layer 2 a (output)": 384,
    "layer 2 dx (gradient to its input)": 2048,
    "dL/dlogits (softmax + cross-entropy, fused)": 384,
    "x rows of the batch (gathered)": 2560,
    "y rows of the batch (gathered)": 256,
}
# 512 rows: x 512 x 20 float32 = 40960 B; y 512 int64 = 4096 B, and its int64 copy; the epoch's
# order and the sampler's two per-shard arrays, 512 int64 each = 4096 B.
DATA_BYTES = {
    "x (training rows)": 40960,
    "y (integer labels, as given)": 4096,
    "y as checked (int64 copy)": 4096,
    "epoch row order (schedule)": 4096,
    "per-shard orders (generator locals, kept for the epoch)": 4096,
    "per-shard step ids (generator locals, kept for the epoch)": 4096,
}


def hand_bound(optimizer: str) -> dict[str, int]:
    items = dict(DATA_BYTES)
    items.update(
        {
            "parameters (flat buffer)": FLAT_BYTES,
            "gradients (flat buffer)": FLAT_BYTES,
            "optimizer scratch": FLAT_BYTES,
        }
    )
    if optimizer == "adam":
        items["optimizer slot 'm'"] = FLAT_BYTES
        items["optimizer slot 'v'"] = FLAT_BYTES
    items.update(BATCH_BYTES)
    return items


@pytest.fixture(scope="module")
def quick():
    """One quick run without the cluster part (both optimizers), shared by the tests below."""
    result = memory.run(quick=True, workers=0)
    assert result["single_process"], result
    for _name, part in result["single_process"].items():
        assert "error" not in part, part.get("error")
    return result


def test_hand_computation_is_what_the_quick_settings_describe():
    assert list(memory.QUICK["layers"]) == [20, 16, 3]
    assert memory.QUICK["batch"] == 32 and memory.QUICK["samples"] == 512


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_bound_matches_the_hand_computation(quick, optimizer):
    bound = quick["single_process"][optimizer]["bound"]
    got = {item["name"]: item["bytes"] for item in bound["items"]}
    expected = hand_bound(optimizer)
    assert got == expected
    assert bound["total_bytes"] == sum(expected.values())
    assert bound["flat_elements"] == 448
    # the issue's own list: the shard, parameters, gradients, optimizer state, one batch's activations
    issue = 40960 + 4096 + 2 * FLAT_BYTES + (2 * FLAT_BYTES if optimizer == "adam" else 0) + 2048 * 3 + 384 * 3
    assert bound["issue_minimum_bytes"] == issue
    if optimizer == "sgd":
        assert any("no optimizer state" in note for note in bound["notes"])
        assert bound["by_category"].get("optimizer state", 0) == 0
    else:
        assert bound["by_category"]["optimizer state"] == 2 * FLAT_BYTES


def test_bound_agrees_with_the_buffers_the_trained_model_holds(quick):
    for part in quick["single_process"].values():
        check = part["bound_check"]
        assert check["actual_model_and_batch_bytes"] is not None, check["what"]
        assert check["match"], check


def test_compute_bound_by_hand_for_a_worker():
    """A rank of 2 on one machine, gradient large enough for shared memory, rank 0 extras."""
    layers = [100, 200, 10]
    # kernel 20000 (a multiple of 32), bias 200 -> 224, kernel 2000 -> 2016, bias 10 -> 32
    flat = 20000 + 224 + 2016 + 32
    assert memory.flat_elements(layers, 4) == flat
    b = memory.compute_bound(
        layers,
        ["relu", "softmax"],
        rows=1000,
        batch_sizes=[64, 40],
        optimizer="sgd",
        received_shard=True,
        shm_peers=1,
        rank0=True,
    )
    items = {i["name"]: i["bytes"] for i in b["items"] if i.get("batch") is None}
    # the gradients live in shared memory and are lent, not copied (2 ranks); a separate sum; the
    # initial weights went to the peer through a segment of rank 0's
    assert items["gradients (flat buffer)"] == items["sum of the gradients (allreduce_into's output)"] == 4 * flat
    assert items["round-1 partner's gradient buffer, mapped (read where it is)"] == 4 * flat
    assert items["own shared-memory segment for peer 1 (the initial weights broadcast through it)"] == 64 + 4 * flat
    assert "own shared-memory segment for peer 1 (gradient copied into it)" not in items
    other = memory.compute_bound(
        layers, ["relu", "softmax"], rows=1000, batch_sizes=[64], received_shard=True, shm_peers=1
    )
    other_items = {i["name"] for i in other["items"]}
    assert "rank 0's segment, mapped (the initial weights read from it)" in other_items
    assert not any("broadcast through it" in name for name in other_items)
    three = memory.compute_bound(
        layers, ["relu", "softmax"], rows=1000, batch_sizes=[64], received_shard=True, shm_peers=2
    )
    assert sum("gradient copied into it" in i["name"] for i in three["items"]) == 2  # 3 ranks: copied, not lent
    four = memory.compute_bound(
        layers, ["relu", "softmax"], rows=1000, batch_sizes=[64], received_shard=True, shm_peers=3
    )
    names = [i["name"] for i in four["items"]]  # 4 ranks: round 1 lent, round 2 copied
    assert sum("mapped" in name for name in names) == 3 and sum("copied into it" in name for name in names) == 1
    assert items["initial weights received from the client"] == 4 * flat
    assert items["trained weights returned to the client"] == 4 * flat
    per_batch = {n: sum(i["bytes"] for i in b["items"] if i.get("batch") == n) for n in (64, 40)}
    for n in (64, 40):
        # z, a of both layers; dx of layer 2; dL/dlogits; gathered x and y
        assert per_batch[n] == 4 * n * (200 + 200 + 10 + 10 + 200 + 10 + 100) + 8 * n
    # a small gradient goes over TCP: no segment kept
    small = memory.compute_bound([20, 16, 3], ["relu", "softmax"], rows=256, batch_sizes=[16], shm_peers=1)
    assert small["by_category"].get("communication", 0) == 0


def test_no_array_is_retained_by_a_steady_step(quick):
    for name, part in quick["single_process"].items():
        a = part["allocations"]
        assert a["steady_steps_measured"] >= 8, name
        assert a["retained_arrays_per_step"] == [0] * a["steady_steps_measured"], (name, a["retained_arrays_where"])
        assert a["max_retained_array_bytes"] == 0
        # the step allocates temporaries (the loss' small arrays), so the probe is tracing NumPy
        assert 0 < a["largest_temporary_bytes"]["max"]
        # and the control step's deliberate leak and temporary were seen
        assert a["control"]["detected"], a["control"]
        assert a["control"]["detected_retained_array_bytes"] >= a["control"]["leaked_bytes"]
        # a new epoch needs its new row order: the window across the boundary sees it
        assert a["epoch_boundary"]["retained_array_bytes"] >= 512 * 8


def test_probe_reports_a_leak_in_every_step():
    """The probe itself, run here with a callback that keeps one array per step."""
    from dtrain.callbacks import Callback

    class Leak(Callback):
        observes_only = True

        def __init__(self):
            super().__init__()
            self.kept = []

        def on_train_batch_begin(self, batch, logs=None):
            self.kept.append(np.ones(1000, dtype=np.float64))

    model = memory._build_model([8, 6, 3], "sgd")
    x, y = memory._data(64, [8, 6, 3])
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=0)
    probe = memory._probe_allocations(model, x, y, 8, [8, 6, 3], extra_callbacks=[Leak()], leak=False)
    assert probe["steady_steps_measured"] >= 3
    # exactly the one array of each step: what earlier steps left is not counted again
    n = probe["steady_steps_measured"]
    assert probe["retained_arrays_per_step"] == [1] * n, probe
    assert probe["retained_array_bytes_per_step"] == [8000] * n, probe
    assert any("test_benchmarks_memory.py" in w["where"] for w in probe["retained_arrays_where"][0])
    assert "control" not in probe


def test_report_is_well_formed(quick):
    json.dumps(quick)  # JSON-able
    assert quick["quick"] is True and quick["cluster"] == {"skipped": "workers=0"}
    for part in quick["single_process"].values():
        steps = part["steps"]
        assert steps == part["epochs"] * part["steps_per_epoch"] >= memory.QUICK["steps"]
        assert len(part["per_step_rss"]["rss_bytes"]) == steps
        assert part["baseline_rss_bytes"] > 0
        assert part["peak_bytes"] >= part["baseline_rss_bytes"] + part["bound"]["total_bytes"] // 2
        assert part["peak_bytes"] == max(part["peak"]["psutil_sampled_bytes"], part["peak"]["ru_maxrss_bytes"])
        expected = part["peak_bytes"] / (part["baseline_rss_bytes"] + part["bound"]["total_bytes"])
        assert math.isclose(part["ratio"], expected, rel_tol=1e-3)
        assert part["per_step_rss"]["slope_bytes_per_step"] is not None
    targets = quick["targets"]
    assert set(targets["peak_rss_within_1.2x_of_bound"]["ratios"]) == {"single_process.sgd", "single_process.adam"}
    assert targets["no_per_step_growth"]["arrays_retained_per_steady_step_max"] == {
        "single_process.sgd": 0,
        "single_process.adam": 0,
    }
    assert targets["not_measured"] == []
    assert quick["summary"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="samples"):
        memory.run(quick=True, samples=40, workers=0)
    with pytest.raises(ValueError, match="optimizers"):
        memory.run(quick=True, optimizers=("rmsprop",), workers=0)
    with pytest.raises(ValueError, match="unexpected"):
        memory.run(quick=True, epochs=3)


def test_a_failed_measurement_is_reported_not_hidden(monkeypatch):
    def fail(kind, cfg, threads, timeout):
        raise memory.BenchmarkError(f"the {kind} measurement failed (exit 1):\nboom")

    monkeypatch.setattr(memory, "_run_child", fail)
    result = memory.run(quick=True, optimizers=("sgd",))
    assert "boom" in result["single_process"]["sgd"]["error"] and "boom" in result["cluster"]["error"]
    assert result["targets"]["not_measured"] == ["single_process.sgd", "cluster"]
    assert result["targets"]["peak_rss_within_1.2x_of_bound"]["met"] is None


def test_cli_quick_prints_one_json_document_and_writes_nothing(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--quick", "--workers", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["benchmark"] == "memory" and doc["command"].startswith("python -m benchmarks.memory")
    assert not out.exists()
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--quick", "--batch", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "batch" in bad.stderr


@pytest.mark.cluster
def test_cluster_part_measures_every_worker():
    result = memory.run(quick=True, optimizers=("sgd",))
    cluster = result["cluster"]
    assert "error" not in cluster, cluster.get("error")
    workers = cluster["per_worker"]
    assert [w["rank"] for w in workers] == [0, 1]
    for w in workers:
        assert w["rows"] == memory.QUICK["samples"] // 2 and w["local_batch_sizes"] == [memory.QUICK["batch"] // 2]
        assert w["baseline_rss_bytes"] > 0 and w["peak"]["samples"] > 0
        assert w["peak_bytes"] >= w["baseline_rss_bytes"]
        assert math.isclose(
            w["ratio"], w["peak_bytes"] / (w["baseline_rss_bytes"] + w["bound"]["total_bytes"]), rel_tol=1e-3
        )
        # (the quick run can be over before the 50 ms sampler has seen a step: the timeline may be empty)
        assert len(w["timeline"]["steps"]) == len(w["timeline"]["rss_bytes"])
        categories = w["bound"]["by_category"]
        assert ("rank 0 transfer" in categories) == (w["rank"] == 0)
        # the shard as received: 256 rows of 20 float32 and 256 int64 labels
        names = {i["name"]: i["bytes"] for i in w["bound"]["items"]}
        assert names["x (training rows)"] == 256 * 20 * 4 and names["y (integer labels, as given)"] == 256 * 8
    assert set(result["targets"]["peak_rss_within_1.2x_of_bound"]["ratios"]) >= {"cluster.rank0", "cluster.rank1"}
