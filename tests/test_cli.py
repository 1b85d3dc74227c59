"""The command line and the examples, run as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dtrain

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_version_matches_package():
    proc = run("-m", "dtrain", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"dtrain {dtrain.__version__}"


def test_no_command_prints_help_and_fails():
    proc = run("-m", "dtrain")
    assert proc.returncode == 2
    assert "demo" in proc.stdout


def test_demo_json_learns_and_saves_a_loadable_model(tmp_path):
    target = tmp_path / "demo.safetensors"
    proc = run("-m", "dtrain", "demo", "--json", "--epochs", "5", "--save", str(target))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON document on stdout
    assert result["device"] == "cpu" and result["workers"] == 2  # an embedded 2-worker cluster by default
    assert result["held_out_accuracy"] > 0.8 > result["chance_accuracy"]
    assert len(result["history"]["loss"]) == 5
    assert result["history"]["loss"][-1] < result["history"]["loss"][0]
    model = dtrain.load_model(target)
    x, y = dtrain.datasets.make_classification(4000, seed=0)
    loss, accuracy = model.evaluate(x[3200:], y[3200:])
    assert accuracy == pytest.approx(result["held_out_accuracy"], abs=1e-6)


def test_demo_in_this_process_with_workers_0():
    proc = run("-m", "dtrain", "demo", "--json", "--epochs", "3", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["workers"] == 0 and result["held_out_accuracy"] > 0.5


def test_demo_human_output():
    proc = run("-m", "dtrain", "demo", "--epochs", "2", "--samples", "500")
    assert proc.returncode == 0, proc.stderr
    assert "Epoch 2/2" in proc.stdout and "held-out accuracy" in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--optimizer", "adamw"], "Unknown optimizer 'adamw'. Known optimizers: adam, rmsprop, sgd."),
        (["--epochs", "0"], "expected a positive integer"),
        (["--samples", "1"], "too few"),
        (["--workers", "-1"], "expected a non-negative integer"),
    ],
)
def test_demo_bad_input_is_one_line_on_stderr(args, message):
    proc = run("-m", "dtrain", "demo", *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(dtrain.gpu_available(), reason="checks the no-GPU message")
def test_demo_on_gpu_without_one_says_why():
    proc = run("-m", "dtrain", "demo", "--device", "gpu")
    assert proc.returncode == 1
    assert "no GPU can be used" in proc.stderr and "device='cpu'" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback


def test_verbose_shows_traceback():
    proc = run("-m", "dtrain", "--verbose", "demo", "--optimizer", "nope")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("script", ["seed_network.py", "digits.py", "digits_cluster.py"])
def test_examples_run_and_assert_their_claims(script):
    proc = run(str(ROOT / "examples" / script))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "accuracy" in proc.stdout


def test_generated_data_is_seeded():
    a = dtrain.datasets.make_classification(100, seed=3)
    b = dtrain.datasets.make_classification(100, seed=3)
    c = dtrain.datasets.make_classification(100, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
