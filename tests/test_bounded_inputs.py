"""Job files, arguments and plans that once took the scheduler's memory or time, or failed late
with an unclear error (issue 16): each refused within a few seconds, with the key or argument at
fault, under an address-space limit, and as a subprocess like a user runs it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_jobspec import MINIMAL

import dtrain
from dtrain.jobs.spec import JobError, load_job
from dtrain.layers import Dense

ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n" for previous, name in zip("abcdefgh", "bcdefghi")
).join(['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n', ""])


def validate_limited(
    path: Path, *extra: str, address_space_mib: int = 1024
) -> tuple[subprocess.CompletedProcess, float]:
    """`dtrain validate PATH` in a process that may map at most ``address_space_mib``."""

    def limit() -> None:
        size = address_space_mib << 20
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "dtrain", "validate", str(path), *extra],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=60,
    )
    return proc, time.monotonic() - start


def write(folder: Path, text: str, name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    assert len(ALIAS_BOMB) < 1024  # a 1 KB file that expands to 9**9 values
    proc, seconds = validate_limited(write(tmp_path, MINIMAL + ALIAS_BOMB))
    assert proc.returncode == 2, proc.stderr
    assert "expands to more than 100,000 values" in proc.stderr and "Traceback" not in proc.stderr
    assert seconds < 10


@pytest.mark.parametrize(
    "suffix, text",
    [(".yaml", "x: " + "[" * 5000 + "]" * 5000 + "\n"), (".json", '{"x": ' + "[" * 5000 + "]" * 5000 + "}\n")],
)
def test_deep_nesting_is_refused_not_a_recursion_error(tmp_path, suffix, text):
    problems = _problems(write(tmp_path, text, "deep" + suffix))
    assert any("nests lists and mappings more than 64 deep" in p for p in problems), problems


def test_a_value_that_contains_itself_is_refused(tmp_path):
    problems = _problems(write(tmp_path, MINIMAL + "extra: &loop [*loop]\n"))
    assert any("contains itself" in p for p in problems), problems


def test_a_fifo_or_folder_in_place_of_a_job_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    proc, seconds = validate_limited(fifo)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr and seconds < 10, proc.stderr
    assert "it is a folder" in " ".join(_problems(tmp_path))


def test_an_oversized_job_file_is_refused_before_parsing(tmp_path):
    problems = _problems(write(tmp_path, MINIMAL + "# " + "x" * (1 << 20) + "\n"))
    assert any("a job file is at most 1,048,576 bytes" in p for p in problems), problems


@pytest.mark.parametrize(
    "line, path, message",
    [
        ("fit: {epochs: 18446744073709551616}", "fit.epochs", "<= 9,007,199,254,740,992"),
        ("fit: {timeout: 1e300}", "fit.timeout", "at most 1,000,000 seconds"),
        ("fit: {batch_size: 1180591620717411303424}", "fit.batch_size", "<= 9,007,199,254,740,992"),
        ("fit: {seed: 18446744073709551616}", "fit.seed", "<= 9,007,199,254,740,992"),
    ],
)
def test_numbers_out_of_range_are_refused_with_their_key(tmp_path, line, path, message):
    problems = _problems(write(tmp_path, MINIMAL + line + "\n"))
    assert any(p.startswith(f"{path}") and message in p for p in problems), problems


def test_too_many_layers_are_refused_and_many_validate_in_linear_time(tmp_path):
    layers = "".join("    - {units: 4}\n" for _ in range(5000))
    problems = _problems(write(tmp_path, MINIMAL.replace("  layers:\n", "  layers:\n" + layers)))
    assert any("5,002 layers: a job's model has at most 4,096" in p for p in problems), problems
    start = time.monotonic()
    dtrain.Sequential([Dense(4) for _ in range(20_000)])  # was quadratic: 8k layers took 3.8 s
    assert time.monotonic() - start < 5


def test_fit_arguments_out_of_range_say_so():
    model = dtrain.Sequential([Dense(2, input_dim=3)])
    model.compile(loss="mse")
    with pytest.raises(ValueError, match="timeout to be at most 1,000,000 seconds"):
        model.fit([[0, 0, 0]], [[0, 0]], timeout=1e300, verbose=0)
    with pytest.raises(ValueError, match="batch_size to be at most 2\\*\\*53"):
        model.fit([[0, 0, 0]], [[0, 0]], batch_size=2**70, verbose=0)


def test_a_negative_connect_timeout_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "dtrain", "status", "x", "--connect-timeout", "-5"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "expected a number of seconds > 0" in proc.stderr, proc.stderr


def _problems(path: Path) -> list[str]:
    with pytest.raises(JobError) as info:
        load_job(path)
    return [f"{p.path}: {p.message}" if p.path else p.message for p in info.value.problems]


def test_step_timings_are_bounded_however_long_the_run():
    """216k steps used to cost 6-8 MiB per worker and 36 MiB on the client: the most recent
    STEP_RECORDS steps are kept, oldest first, with their positions."""
    from dtrain.training.loop import STEP_RECORDS, StepTimes

    times = StepTimes(216_000)
    assert times._table.nbytes == 4 * 8 * STEP_RECORDS
    for position in range(216_000):
        times.record(position, 1.0, 2.0, float(position))
    kept = times.as_arrays()
    assert list(kept["position"]) == list(range(216_000 - STEP_RECORDS, 216_000))
    assert list(kept["step"]) == [float(p) for p in kept["position"]]
    short = StepTimes(3)
    short.record(7, 1.0, 2.0, 3.0)
    assert list(short.as_arrays()["position"]) == [7]


def test_steps_csv_numbers_the_kept_steps_by_their_position():
    import numpy as np

    from dtrain.callbacks import History
    from dtrain.jobs.outputs import _steps_csv

    history = History()
    history.params = {"steps": 10}
    history.step_times = {"step": np.array([[0.001, 0.002]]), "position": np.array([38, 39])}
    lines = _steps_csv(history).splitlines()
    assert lines[1].startswith("4,9,") and lines[2].startswith("4,10,")
