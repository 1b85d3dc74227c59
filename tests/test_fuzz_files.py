"""Mutated files (bytes flipped, cut, duplicated) fed to the job-file loader, load_model and
load_latest: each answers with its documented error (or loads), never another exception, and
quickly. A bounded number of mutations with a fixed seed, so that a failure reproduces."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import dtrain
from dtrain.checkpoints import Checkpoint, CheckpointError, load_latest, write_checkpoint
from dtrain.jobs.spec import JobError, load_job
from dtrain.layers import Dense

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = 150


def mutations(data: bytes, seed: int):
    """``MUTATIONS`` variants of ``data``: flipped bytes, a cut, a repeated slice, a new byte."""
    rng = np.random.default_rng(seed)
    for _ in range(MUTATIONS):
        buf = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            for i in rng.integers(0, len(buf), size=int(rng.integers(1, 8))):
                buf[i] = int(rng.integers(256))
        elif kind == 1:
            buf = buf[: int(rng.integers(0, len(buf)))]
        elif kind == 2:
            a = int(rng.integers(0, len(buf)))
            b = min(len(buf), a + int(rng.integers(1, 64)))
            buf[a:a] = buf[a:b] * int(rng.integers(1, 4))
        else:
            buf.insert(int(rng.integers(0, len(buf) + 1)), int(rng.choice([ord(c) for c in "&*[{:-'\"\\n\\t0"])))
        yield bytes(buf)


def test_the_job_file_loader_answers_every_mutation_with_a_job_error(tmp_path):
    original = (ROOT / "examples" / "jobs" / "seed_network.yaml").read_bytes()
    path = tmp_path / "job.yaml"
    start = time.monotonic()
    for data in mutations(original, seed=1):
        path.write_bytes(data)
        try:
            load_job(path)
        except JobError:
            pass
    assert time.monotonic() - start < 60


def test_load_model_answers_every_mutation_with_a_value_error(tmp_path):
    model = dtrain.Sequential([Dense(4, activation="relu", input_dim=3), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.build(seed=0)
    good = tmp_path / "good.safetensors"
    model.save(good)
    path = tmp_path / "m.safetensors"
    for data in mutations(good.read_bytes(), seed=2):
        path.write_bytes(data)
        try:
            loaded = dtrain.load_model(path)
        except ValueError:
            continue
        # (a flipped byte inside a weight loads: the file has no checksum) the architecture's shapes
        assert [w.shape for w in loaded.get_weights()] == [w.shape for w in model.get_weights()]


@pytest.mark.parametrize("part", ["json", "safetensors"])
def test_load_latest_answers_every_mutation_with_a_checkpoint_or_a_checkpoint_error(tmp_path, part):
    folder = tmp_path / "ckpt"
    meta = {"dtype": "float32", "plan": {"rows": 100, "batch_size": 10}, "history": [{"loss": 1.0}] * 3}
    arrays = {"params": np.arange(6, dtype=np.float32), "optimizer.iterations": np.array(30, np.int64)}
    write_checkpoint(folder, Checkpoint(arrays=arrays, epoch=3, step=0, global_step=30, meta=meta))
    target = folder / f"ckpt-0000000030.{part}"
    original = target.read_bytes()
    for data in mutations(original, seed=3):
        target.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                found = load_latest(folder)
            except CheckpointError:
                continue
        assert found is not None and found.global_step == 30
