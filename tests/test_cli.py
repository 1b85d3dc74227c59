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
        (
            ["--optimizer", "adafactor"],
            "Unknown optimizer 'adafactor'. Known optimizers: adadelta, adagrad, adam, adamax, adamw, ftrl, lion, nadam, rmsprop, sgd.",
        ),
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


# -- the console scripts: `dtrain` and Dask's `dask dtrain` ----------------------------------------

SEED_JOB = ROOT / "examples" / "jobs" / "seed_network.yaml"
COMMANDS = ["demo", "validate", "run", "submit", "resume", "status", "cancel", "logs", "list", "report"]


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    """The console script ``name`` of this environment (pip installs it next to the interpreter)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"no {name} script next to {sys.executable}: `pip install -e .` first"
    return subprocess.run([str(path), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_dtrain_help_lists_every_command_in_order():
    proc = script("dtrain", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: dtrain ")
    listed = proc.stdout.split("Commands:\n", 1)[1]
    names = [line.split()[0] for line in listed.splitlines() if line.startswith("  ") and not line.startswith("   ")]
    assert names == COMMANDS
    for option in ("--version", "--verbose", "-h, --help"):
        assert option in proc.stdout
    submit = script("dtrain", "submit", "-h")
    assert submit.returncode == 0 and "JOB  the job file (YAML or JSON)" in submit.stdout
    for option in (
        "--json",
        "--verbose",
        "--set KEY.PATH=VALUE",
        "--scheduler ADDRESS",
        "--scheduler-file PATH",
        "--connect-timeout SECONDS",
    ):
        assert option in submit.stdout


def test_help_imports_neither_dask_nor_the_training_modules():
    code = (
        "import sys\n"
        "from dtrain.cli import main\n"
        "assert main(['--help']) == 0\n"
        "assert main(['validate', '--help']) == 0\n"
        "print(sorted(m for m in ('dask', 'distributed', 'dtrain.jobs', 'dtrain.driver') if m in sys.modules))"
    )
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_dtrain_validate_an_example_job():
    proc = script("dtrain", "validate", str(SEED_JOB))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{SEED_JOB} is valid: job 'seed_network', layers 64 -> 10,")
    as_json = script("dtrain", "validate", str(SEED_JOB), "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["valid"] is True


def test_dask_dtrain_help():
    proc = script("dask", "dtrain", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: dask dtrain ")
    assert all(f"  {name} " in proc.stdout for name in COMMANDS)
    listed = script("dask", "--help")
    assert listed.returncode == 0 and "  dtrain " in listed.stdout
    assert script("dask", "dtrain", "--version").stdout.strip() == f"dtrain {dtrain.__version__}"


@pytest.mark.parametrize(
    "args",
    [
        # (two cases: each runs both console scripts, a few seconds; the rest of validate is
        # tested through dtrain alone)
        [str(SEED_JOB), "--json", "--set", "fit.epochs=3"],
        [str(SEED_JOB), "--set", "fit.epochs=-1"],  # an invalid job: exit 2, the same one line on stderr
    ],
)
def test_dask_dtrain_validate_is_dtrain_validate(args):
    ours, dasks = script("dtrain", "validate", *args), script("dask", "dtrain", "validate", *args)
    assert (dasks.returncode, dasks.stdout, dasks.stderr) == (ours.returncode, ours.stdout, ours.stderr)
    assert ours.returncode == (2 if "fit.epochs=-1" in args else 0), ours.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["submit", str(SEED_JOB), "--schedulr", "tcp://x:8786"], "--schedulr"),  # an unknown option
        (["validate"], "JOB"),  # a missing argument
        (["status"], "JOB_ID"),
        (["demo", "--epochs", "0"], "expected a positive integer, received '0'"),  # a bad value
        (["demo", "--device", "tpu"], "tpu"),
        (["no-such-command"], "no-such-command"),
    ],
)
@pytest.mark.parametrize("cli", [["dtrain"], ["dask", "dtrain"]])
def test_usage_errors_exit_2(cli, args, message):
    proc = script(*cli, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_no_command_prints_help_and_exits_2_under_dask_too():
    proc = script("dask", "dtrain")
    assert proc.returncode == 2 and "Usage: dask dtrain " in proc.stdout and "validate" in proc.stdout


def test_long_options_take_unique_prefixes_as_before():
    proc = script("dtrain", "validate", str(SEED_JOB), "--js", "--se", "fit.epochs=2")  # --json, --set
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["job"]["fit"]["epochs"] == 2


# -- every option and argument says what it is ------------------------------------------------------


def _commands(group, prefix=()):
    """(path, command) of every command under ``group``, the group itself first."""
    import click

    yield prefix, group
    if isinstance(group, click.Group):
        ctx = click.Context(group, info_name=" ".join(prefix) or "dtrain")
        for name in group.list_commands(ctx):
            yield from _commands(group.get_command(ctx, name), (*prefix, name))


def test_every_option_and_argument_of_every_command_has_help():
    import click

    from dtrain.cli import _Argument, cli

    walked, missing = [], []
    for path, command in _commands(cli):
        walked.append(" ".join(path))
        ctx = click.Context(command, info_name=" ".join(("dtrain", *path)))
        shown = command.get_help(ctx)
        for param in command.get_params(ctx):
            name = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
            where = " ".join(("dtrain", *path, name))
            if isinstance(param, click.Option):
                if not (param.help or "").strip():
                    missing.append(where)
            elif not (isinstance(param, _Argument) and param.argument_help.strip()):
                missing.append(where)  # click's own Argument has no help: use _Argument
            elif param.argument_help not in " ".join(shown.split()):
                missing.append(f"{where} (not in --help)")
    assert set(walked) >= {"", *COMMANDS}  # the group and every command were walked
    assert not missing, f"without help: {missing}"


def test_every_command_that_takes_scheduler_takes_scheduler_file_and_refuses_both():
    import click

    from dtrain.cli import _parse, cli

    required = {"submit": [str(SEED_JOB)], "resume": ["OUT"], "status": ["ID"], "cancel": ["ID"], "logs": ["ID"]}
    naming = []
    for path, command in _commands(cli):
        options = {opt for param in command.params for opt in param.opts}
        assert ("--scheduler" in options) == ("--scheduler-file" in options), path
        if "--scheduler" not in options:
            continue
        naming.append(path[-1])
        line = [*path, *required.get(path[-1], [])]
        assert _parse([*line, "--scheduler-file", "s.json"])["scheduler_file"] == "s.json"
        with pytest.raises(click.UsageError, match="--scheduler and --scheduler-file both name the scheduler"):
            _parse([*line, "--scheduler", "tcp://h:8786", "--scheduler-file", "s.json"])
    assert sorted(naming) == ["cancel", "list", "logs", "resume", "status", "submit"]
