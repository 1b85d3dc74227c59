"""Job files (dtrain.jobs.spec): defaults, paths, JSON, every kind of problem with its key path
and line, overrides, the example jobs, and that a valid job builds and trains. No Dask cluster."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import dtrain
from dtrain.datasets import make_classification
from dtrain.jobs.spec import Job, JobError, Problem, job_from_dict, load_job

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "jobs"

# The smallest valid job: synthetic data, every optional section left out.
MINIMAL = """\
model:
  layers:
    - {units: 8, activation: relu}
    - {units: 3, activation: softmax}
compile:
  loss: categorical_crossentropy
data:
  train: {format: synthetic, samples: 60, features: 4, classes: 3}
"""


def under(text: str, section: str, line: str) -> str:
    """``text`` with ``line`` added at the top of ``section`` ("compile:")."""
    return text.replace(f"{section}\n", f"{section}\n{line}\n", 1)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, overrides=()) -> list[Problem]:
    with pytest.raises(JobError) as info:
        load_job(path, overrides)
    return info.value.problems


def find(problems: list[Problem], path: str) -> Problem:
    matches = [p for p in problems if p.path == path]
    assert matches, f"no problem at {path!r} in {[str(p) for p in problems]}"
    return matches[0]


# -- defaults, paths, formats ---------------------------------------------------------------------


def test_defaults_are_filled_in(tmp_path):
    job = load_job(write(tmp_path, "tiny job.yaml", MINIMAL))
    assert isinstance(job, Job)
    assert job.spec == {
        "name": "tiny-job",  # the file's stem, made a valid name
        "model": {
            "dtype": "float32",
            "layers": [
                {"type": "dense", "units": 8, "activation": "relu"},
                {"type": "dense", "units": 3, "activation": "softmax"},
            ],
        },
        "compile": {"loss": "categorical_crossentropy", "optimizer": "rmsprop", "metrics": []},
        "data": {
            "train": {"format": "synthetic", "samples": 60, "features": 4, "classes": 3, "seed": 0, "separation": 1.0},
            "validation": None,
        },
        "fit": {
            "epochs": 1,
            "batch_size": 32,
            "seed": 0,
            "shuffle": True,
            "shards": None,
            "timeout": 60,
            "max_restarts": 2,
            "on_nonfinite": "stop",
            "class_weight": None,
        },
        "cluster": {"workers": None, "device": "auto", "elastic": False, "min_workers": None, "max_workers": None},
        "output": {
            "dir": str(tmp_path / "runs" / "tiny-job"),
            "checkpoint": {"every": "epoch", "keep": 3},
            "mlflow": None,
        },
    }
    assert json.loads(json.dumps(job.spec)) == job.spec  # plain JSON-able
    assert (job.name, job.epochs, job.workers, job.device) == ("tiny-job", 1, None, "auto")
    assert job.output_dir == str(tmp_path / "runs" / "tiny-job")
    assert job.source == str(tmp_path / "tiny job.yaml")


def test_empty_optional_sections_take_their_defaults(tmp_path):
    job = load_job(write(tmp_path, "job.yaml", MINIMAL + "fit:\ncluster:\n"))
    assert job.spec["fit"]["batch_size"] == 32 and job.spec["cluster"]["device"] == "auto"


def test_relative_paths_are_taken_from_the_job_files_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "x.npy", np.zeros((4, 2)))
    np.save(tmp_path / "data" / "y.npy", np.zeros((4, 3)))
    path = write(
        tmp_path,
        "jobs/job.yaml",
        MINIMAL.replace(
            "{format: synthetic, samples: 60, features: 4, classes: 3}",
            "{format: npy, x: ../data/x.npy, y: 'memory://bucket/y.npy'}",
        )
        + "output: {dir: out/here}\n",
    )
    monkeypatch.chdir(tmp_path / "data")  # the working directory plays no part
    job = load_job(os.path.relpath(path))
    assert job.spec["data"]["train"]["x"] == str(tmp_path / "data" / "x.npy")
    assert job.spec["data"]["train"]["y"] == "memory://bucket/y.npy"  # URLs stay as they are
    assert job.output_dir == str(tmp_path / "jobs" / "out" / "here")
    assert os.path.isabs(job.output_dir)


def test_job_from_dict_resolves_against_base_dir_and_can_skip_file_checks(tmp_path):
    spec = yaml.safe_load(MINIMAL)
    spec["data"]["train"] = {"format": "npy", "x": "x.npy", "y": "y.npy"}
    with pytest.raises(JobError) as info:
        job_from_dict(spec, base_dir=tmp_path)
    assert {p.path for p in info.value.problems} == {"data.train.x", "data.train.y"}
    job = job_from_dict(spec, base_dir=tmp_path, check_files=False, source="sent.yaml")
    assert job.spec["data"]["train"]["x"] == str(tmp_path / "x.npy")
    assert job.name == "sent" and job.source == "sent.yaml"
    assert spec["data"]["train"]["x"] == "x.npy"  # the caller's dict is left alone


def test_job_from_dict_takes_tuples_for_lists(tmp_path):
    """A spec that crossed Dask's comms (msgpack) has tuples where the file had lists."""
    job = load_job(write(tmp_path, "job.yaml", under(MINIMAL, "compile:", "  metrics: [accuracy]")))
    spec = job.to_dict()
    spec["model"]["layers"] = tuple(spec["model"]["layers"])
    spec["compile"]["metrics"] = ("accuracy",)
    assert job_from_dict(spec).spec == job.spec


def test_every_data_format_is_normalized(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.zeros((4, 2)), labels=np.zeros(4))
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    (tmp_path / "pq").mkdir()
    base = yaml.safe_load(MINIMAL)
    sources = {
        "npz": (
            {"format": "npz", "path": "d.npz", "x": "features", "y": "labels"},
            {"format": "npz", "path": str(tmp_path / "d.npz"), "x": "features", "y": "labels", "storage_options": {}},
        ),
        "csv": (
            {"format": "csv", "path": "t.csv", "label": "b"},
            {"format": "csv", "path": str(tmp_path / "t.csv"), "label": "b", "features": None, "storage_options": {}},
        ),
        "parquet": (
            {"format": "parquet", "path": "pq", "label": ["a"], "features": ["b"], "storage_options": {"anon": True}},
            {
                "format": "parquet",
                "path": str(tmp_path / "pq"),
                "label": ["a"],
                "features": ["b"],
                "storage_options": {"anon": True},
            },
        ),
        "csv list": (
            {"format": "csv", "path": ["t.csv", "memory://t2.csv"], "label": "b"},
            {
                "format": "csv",
                "path": [str(tmp_path / "t.csv"), "memory://t2.csv"],
                "label": "b",
                "features": None,
                "storage_options": {},
            },
        ),
    }
    for given, expected in sources.values():
        job = job_from_dict({**base, "data": {"train": given, "validation": given}}, base_dir=tmp_path)
        assert job.spec["data"]["train"] == expected
        assert job.spec["data"]["validation"] == expected


def test_json_job_files_are_read_with_their_lines(tmp_path):
    spec = yaml.safe_load(MINIMAL)
    spec["compile"]["optimizer"] = {"name": "adam", "learning_rate": 1e-3}
    text = json.dumps(spec, indent="\t")  # tab indentation: valid JSON, not valid YAML as it is
    assert json.loads(text)["compile"]["optimizer"]["learning_rate"] == 0.001
    from_json = load_job(write(tmp_path, "job.json", text))
    from_yaml = load_job(write(tmp_path, "job.yaml", yaml.safe_dump(spec)))
    assert from_json.spec == {**from_yaml.spec, "name": "job"}

    # Lines come through too: the YAML loader reads the JSON text.
    bad = json.dumps({**spec, "fit": {"epochs": 0}}, indent="\t")
    line = next(i for i, text in enumerate(bad.splitlines(), 1) if '"epochs"' in text)
    problem = find(problems_of(write(tmp_path, "bad.json", bad)), "fit.epochs")
    assert problem.line == line > 1
    # JSON is recognised by its content too, whatever the suffix.
    problem = find(problems_of(write(tmp_path, "bad.job", bad)), "fit.epochs")
    assert problem.line == line


def test_json_that_yaml_cannot_read_falls_back_to_json_without_lines(tmp_path):
    spec = yaml.safe_load(MINIMAL)
    spec["k" * 1100] = 1  # PyYAML refuses keys over 1024 characters; JSON does not
    problems = problems_of(write(tmp_path, "job.json", json.dumps(spec, indent=2)))
    assert [(p.path, p.line) for p in problems] == [("k" * 1100, None)]
    assert "unknown section" in problems[0].message


def test_yaml_reads_exponent_notation_as_numbers(tmp_path):
    job = load_job(
        write(
            tmp_path,
            "job.yaml",
            under(MINIMAL, "compile:", "  optimizer: {name: adam, learning_rate: 1e-3, epsilon: 1.0e-8}"),
        )
    )
    assert job.spec["compile"]["optimizer"] == {"name": "adam", "learning_rate": 0.001, "epsilon": 1e-8}


# -- problems: where, what, all of them ---------------------------------------------------------------

BAD = """\
name: my job
model:
  dtype: float16
  layers:
    - {units: 8, activation: relu, input_dim: 4}
    - units: 0
      activation: relux
      bogus: 1
compile:
  loss: categorical_crossentropy
  optimizer: {name: sgd, learning_rate: -1, momentun: 0.9}
  metrics: [accuracy, foo]
data:
  train: {format: npy, x: nowhere/x.npy, y: 'nosuchproto://bucket/y.npy'}
  validation: {split: 1.5}
fit:
  epoch: 5
  batch_size: 0
  shuffle: yes please
  timeout: -1
cluster: {workers: [a, a], device: gpux}
output: {dir: 3}
extra: 1
"""


def test_every_problem_is_reported_with_its_key_path_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", BAD)
    with pytest.raises(JobError) as info:
        load_job(path)
    err = info.value
    expected = {  # path: (line, part of the message)
        "name": (1, "letters, digits"),
        "model.dtype": (3, "float32, float64"),
        "model.layers[1].units": (6, "positive integer"),
        "model.layers[1].activation": (7, "Unknown activation 'relux'"),
        "model.layers[1].bogus": (8, "unknown key"),
        "compile.optimizer.learning_rate": (11, "positive number"),
        "compile.optimizer.momentun": (11, "did you mean 'momentum'?"),
        "data.train.x": (14, "file not found"),
        "data.train.y": (14, "'nosuchproto'"),
        "data.validation.split": (15, "between 0 and 1"),
        "fit.epoch": (17, "did you mean 'epochs'?"),
        "fit.batch_size": (18, "positive integer"),
        "fit.shuffle": (19, "true or false"),
        "fit.timeout": (20, "number > 0"),
        "cluster.workers[1]": (21, "listed twice"),
        "cluster.device": (21, "did you mean 'gpu'?"),
        "output.dir": (22, "path or URL"),
        "extra": (23, "unknown section"),
    }
    got = {p.path: p for p in err.problems}
    for key, (line, fragment) in expected.items():
        assert key in got, f"{key} not reported: {err}"
        assert got[key].line == line, f"{key}: line {got[key].line}, expected {line}"
        assert fragment in got[key].message, got[key].message
    # The metric is checked although the layers are not valid: it needs only the loss.
    assert find(err.problems, "compile.metrics[1]").message.startswith("Unknown metric 'foo'")
    # One problem per line, each '<file>: <key.path> (line N): <message>'.
    lines = str(err).splitlines()
    assert len(lines) == len(err.problems) >= len(expected)
    assert f"{path}: fit.epoch (line 17): unknown key; did you mean 'epochs'?" in lines
    assert f"{path}: model.layers[1].activation (line 7): Unknown activation 'relux'" in str(err)
    assert pickle.loads(pickle.dumps(err)).problems == err.problems  # it can cross processes


def test_missing_sections_and_keys(tmp_path):
    problems = problems_of(
        write(
            tmp_path,
            "job.yaml",
            """\
        model:
          layers:
            - {activation: relu}
        data:
          train: {samples: 10}
          validation: {path: x.npy}
        """,
        )
    )
    assert "missing required section 'compile'" in [p.message for p in problems if p.path == ""]
    assert find(problems, "model.layers[0]") == Problem("model.layers[0]", "missing required key 'units'", 3)
    assert find(problems, "data.train").message.startswith("missing required key 'format'")
    assert find(problems, "data.train").line == 5
    assert "split" in find(problems, "data.validation").message


def test_unknown_keys_suggest_the_closest_known_one(tmp_path):
    problems = problems_of(write(tmp_path, "job.yaml", MINIMAL.replace("model:", "modle:") + "fit: {batchsize: 4}\n"))
    assert find(problems, "modle").message == "unknown section; did you mean 'model'?"
    assert find(problems, "fit.batchsize").message == "unknown key; did you mean 'batch_size'?"
    # A key YAML reads as something else (yes: a boolean) is placed on its mapping's line.
    problems = problems_of(write(tmp_path, "job.yaml", MINIMAL + "fit:\n  epochs: 2\n  yes: 1\n"))
    assert find(problems, "fit.True").line == 9
    problems = problems_of(
        write(tmp_path, "job.yaml", MINIMAL.replace("format: synthetic", "format: synthetc, sample: 3"))
    )
    assert "did you mean 'synthetic'?" in find(problems, "data.train.format").message


def test_syntax_errors_give_line_and_column(tmp_path):
    path = write(tmp_path, "job.yaml", "model:\n  layers: [1, 2\nfit: {}\n")
    with pytest.raises(JobError) as info:
        load_job(path)
    (problem,) = info.value.problems
    assert problem.line == 3 and "column 4" in problem.message and "syntax error" in problem.message
    assert str(info.value) == f"{path}: line 3: {problem.message}"
    (problem,) = problems_of(write(tmp_path, "job.json", '{"model": {"layers": [1, 2}}'))
    assert problem.line == 1 and "JSON syntax error at column" in problem.message


def test_unreadable_empty_and_non_mapping_files(tmp_path):
    assert "cannot read" in problems_of(tmp_path / "nope.yaml")[0].message
    assert "empty" in problems_of(write(tmp_path, "empty.yaml", "# nothing\n"))[0].message
    assert "mapping of sections" in problems_of(write(tmp_path, "list.yaml", "- 1\n"))[0].message


def test_duplicate_keys_are_problems(tmp_path):
    problems = problems_of(write(tmp_path, "job.yaml", MINIMAL + "fit: {epochs: 2}\nfit: {epochs: 3}\n"))
    assert find(problems, "fit") == Problem(
        "fit", "this key appears twice in its mapping (first on line 9); only the last is used, remove one", 10
    )


def test_model_and_compile_are_checked_by_building_them(tmp_path):
    problems = problems_of(
        write(
            tmp_path,
            "job.yaml",
            """\
        model:
          layers:
            - {units: 8, input_dim: 4, input_shape: [5]}
            - {units: 3, activation: softmax, name: out, type: conv}
            - {units: 3, activation: softmax, name: out, kernel_initializer: glorot_unifrom}
        compile:
          loss: {name: categorical_crossentropy, from_logit: true}
          optimizer: sgdd
          metrics: [{name: binary_accuracy, threshold: 2}]
        data:
          train: {format: synthetic, samples: 60, features: 4, classes: 3}
        """,
        )
    )
    assert "disagree" in find(problems, "model.layers[0]").message  # an error no single argument causes
    assert (
        "unknown layer type 'conv'; known types: input, dense, dropout"
        in find(problems, "model.layers[1].type").message
    )
    assert "Unknown initializer 'glorot_unifrom'" in find(problems, "model.layers[2].kernel_initializer").message
    assert (
        find(problems, "compile.loss.from_logit").message
        == "unknown parameter of 'categorical_crossentropy'; did you mean 'from_logits'?"
    )
    assert find(problems, "compile.optimizer").message.startswith(
        "Unknown optimizer 'sgdd'. Known optimizers: adadelta, adagrad, adam"
    )
    assert find(problems, "compile.optimizer").line == 8


def test_layer_stack_and_compile_are_checked_as_a_whole(tmp_path):
    stack = MINIMAL.replace(
        "{units: 3, activation: softmax}", "{units: 3, activation: softmax, name: a}\n    - {units: 3, name: a}"
    )
    problems = problems_of(write(tmp_path, "job.yaml", stack))
    assert "already has a layer named 'a'" in find(problems, "model.layers[2]").message

    logits = MINIMAL.replace(
        "loss: categorical_crossentropy", "loss: {name: categorical_crossentropy, from_logits: true}"
    )
    problem = find(problems_of(write(tmp_path, "job.yaml", logits)), "compile.loss")
    assert "from_logits=True" in problem.message and problem.line == 6

    twice = under(MINIMAL, "compile:", "  metrics: [accuracy, accuracy]")
    assert "unique" in find(problems_of(write(tmp_path, "job.yaml", twice)), "compile").message


def test_model_is_checked_against_synthetic_data(tmp_path):
    text = MINIMAL.replace("{units: 8, activation: relu}", "{units: 8, activation: relu, input_dim: 5}")
    problem = find(problems_of(write(tmp_path, "job.yaml", text)), "model.layers[0].input_dim")
    assert problem.line == 3 and "data.train.features is 4" in problem.message

    problem = find(
        problems_of(write(tmp_path, "job.yaml", MINIMAL.replace("units: 3", "units: 5"))), "model.layers[1].units"
    )
    assert "classes=3" in problem.message

    sparse = MINIMAL.replace("loss: categorical_crossentropy", "loss: sparse_categorical_crossentropy")
    assert "one-hot" in find(problems_of(write(tmp_path, "job.yaml", sparse)), "compile.loss").message

    sizes = MINIMAL + "  validation: {split: 0.99}\nfit: {shards: 8, batch_size: 4}\n"
    problems = problems_of(write(tmp_path, "job.yaml", sizes))
    assert "leaves 0 for training and 60 for validation" in find(problems, "data.validation.split").message
    assert "smaller than the number of shards" in find(problems, "fit.shards").message

    synthetic_validation = (
        MINIMAL + "  validation: {format: synthetic, samples: 10, features: 4, classes: 3, seed: 1}\n"
    )
    assert (
        "split"
        in find(problems_of(write(tmp_path, "job.yaml", synthetic_validation)), "data.validation.format").message
    )

    bad_source = MINIMAL.replace("classes: 3}", "classes: 1, separation: -1}")
    problems = problems_of(write(tmp_path, "job.yaml", bad_source))
    assert "classes" in find(problems, "data.train.classes").message
    assert "separation" in find(problems, "data.train.separation").message


def test_missing_files_globs_and_urls(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "table").mkdir()

    def train(source: str) -> Path:
        return write(
            tmp_path, "job.yaml", MINIMAL.replace("{format: synthetic, samples: 60, features: 4, classes: 3}", source)
        )

    problem = find(problems_of(train("{format: npz, path: none.npz}")), "data.train.path")
    assert (
        problem.message
        == f"file not found: {tmp_path / 'none.npz'} (relative paths are taken from the job file's folder)"
    )
    assert (
        "matches no files"
        in find(problems_of(train("{format: csv, path: parts/*.csv, label: y}")), "data.train.path").message
    )
    assert (
        "is a directory" in find(problems_of(train("{format: csv, path: parts, label: y}")), "data.train.path").message
    )
    assert "is a directory" in find(problems_of(train("{format: npy, x: parts, y: parts}")), "data.train.x").message
    assert "'nosuch'" in find(problems_of(train("{format: npz, path: 'nosuch://b/d.npz'}")), "data.train.path").message
    listed = problems_of(train("{format: parquet, path: [table, none.parquet], label: [y, 3]}"))
    assert {p.path for p in listed} == {"data.train.path[1]", "data.train.label[1]"}

    (tmp_path / "parts" / "a.csv").write_text("x,y\n1,0\n")
    for source in (
        "{format: csv, path: parts/*.csv, label: y}",
        "{format: parquet, path: table, label: y}",
        "{format: npz, path: 'memory://bucket/d.npz', storage_options: {anon: true}}",
    ):
        load_job(train(source))  # a glob with a match, a directory, a URL (never opened: we may be offline)


# -- --set overrides --------------------------------------------------------------------------------------


def test_overrides_parse_yaml_values_and_index_lists(tmp_path):
    job = load_job(
        write(tmp_path, "job.yaml", MINIMAL),
        [
            "fit.epochs=3",
            "fit.shuffle=false",
            "fit.timeout=1.5",
            "fit.shards=null",
            "model.layers[0].units=128",
            "cluster.workers=[tcp://a:1, tcp://b:2]",
            "compile.optimizer={name: sgd, momentum: 0.9}",
            "name=renamed",
        ],
    )
    fit = job.spec["fit"]
    assert (fit["epochs"], fit["shuffle"], fit["timeout"], fit["shards"]) == (3, False, 1.5, None)
    assert job.spec["model"]["layers"][0]["units"] == 128
    assert job.workers == ["tcp://a:1", "tcp://b:2"]
    assert job.spec["compile"]["optimizer"] == {"name": "sgd", "momentum": 0.9}
    assert job.name == "renamed" and job.output_dir == str(tmp_path / "runs" / "renamed")


def test_overrides_create_missing_mappings(tmp_path):
    job = load_job(
        write(tmp_path, "job.yaml", MINIMAL),
        ["cluster.device=cpu", "data.validation.split=0.25", "output.dir=elsewhere"],
    )
    assert job.device == "cpu"
    assert job.spec["data"]["validation"] == {"split": 0.25}
    assert job.output_dir == str(tmp_path / "elsewhere")


def test_malformed_overrides_are_problems_naming_them(tmp_path):
    path = write(tmp_path, "job.yaml", MINIMAL)
    problems = problems_of(
        path, ["fit.epochs", "model.layers[2].units=4", "compile.loss.name=x", "fit.epochs=[1", "a..b=1"]
    )
    assert all(p.origin == "--set" and p.line is None for p in problems)
    messages = [str(p) for p in problems]
    assert messages[0].startswith("--set 'fit.epochs' is not key.path=value")
    assert messages[1] == (
        "model.layers[2].units (from --set): cannot apply --set 'model.layers[2].units=4': "
        "index 2 is out of range: model.layers has 2 item(s)"
    )
    assert "compile.loss is not a mapping" in messages[2]
    assert "not valid YAML" in messages[3]
    assert "'a..b=1' is not key.path=value" in messages[4]
    assert len(problems) == 5  # and the job itself is otherwise valid


def test_problems_in_overridden_values_say_from_set(tmp_path):
    path = write(tmp_path, "job.yaml", MINIMAL + "fit: {epochs: 2}\n")
    with pytest.raises(JobError) as info:
        load_job(path, ["fit.epochs=0", "fit.epoch=1", "data.validation.format=npy"])
    problems = info.value.problems
    assert find(problems, "fit.epochs") == Problem("fit.epochs", "expected a positive integer, got 0", None, "--set")
    assert find(problems, "fit.epoch").origin == "--set"
    assert find(problems, "data.validation").origin == "--set"  # a mapping the override created
    assert f"{path}: fit.epochs (from --set): expected a positive integer, got 0" in str(info.value).splitlines()


# -- the resolved job -------------------------------------------------------------------------------------


def test_to_yaml_round_trips_through_load_job(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    np.save(tmp_path / "y.npy", np.zeros((4, 3)))
    source = MINIMAL.replace(
        "{format: synthetic, samples: 60, features: 4, classes: 3}", "{format: npy, x: x.npy, y: y.npy}"
    )
    source = under(source, "compile:", "  optimizer: {name: adam, learning_rate: 1e-3}\n  metrics: [accuracy]")
    job = load_job(write(tmp_path, "job.yaml", source))
    text = job.to_yaml()
    assert (
        text.index("name:") < text.index("model:") < text.index("compile:") < text.index("data:") < text.index("fit:")
    )
    again = load_job(write(tmp_path, "elsewhere/resolved.yaml", text))  # another folder: paths are absolute
    assert again.spec == job.spec
    assert job_from_dict(job.to_dict()).spec == job.spec
    assert job.to_dict() == job.spec and job.to_dict() is not job.spec


def test_build_model_gives_the_compiled_model(tmp_path):
    job = load_job(
        write(
            tmp_path,
            "job.yaml",
            """\
        model:
          dtype: float64
          layers:
            - {units: 8, activation: tanh, input_dim: 4, kernel_initializer: he_normal, name: hidden}
            - {units: 3, activation: softmax, use_bias: false}
        compile:
          loss: categorical_crossentropy
          optimizer: {name: sgd, learning_rate: 0.05, momentum: 0.9}
          metrics: [accuracy, {name: categorical_accuracy}]
        data:
          train: {format: synthetic, samples: 60, features: 4, classes: 3}
        cluster: {device: cpu}
        """,
        )
    )
    model = job.build_model()
    assert isinstance(model, dtrain.Sequential) and model.compiled and not model.built
    assert (model.device, model.dtype, model.name) == ("cpu", "float64", "job")
    hidden, out = (entry["config"] for entry in model.get_config()["layers"])
    assert (
        hidden["name"],
        hidden["units"],
        hidden["activation"],
        hidden["input_dim"],
        hidden["kernel_initializer"],
    ) == ("hidden", 8, "tanh", 4, "he_normal")
    assert (out["units"], out["activation"], out["use_bias"]) == (3, "softmax", False)
    compiled = model.compile_config()
    assert compiled["optimizer"] == {
        "class_name": "sgd",
        "config": {"learning_rate": 0.05, "momentum": 0.9, "nesterov": False},
    }
    assert compiled["loss"] == "categorical_crossentropy"
    assert model.metrics_names == ["loss", "accuracy", "categorical_accuracy"]


def test_fit_options_are_what_fit_takes(tmp_path):
    job = load_job(
        write(tmp_path, "job.yaml", MINIMAL + "fit: {epochs: 1, batch_size: 16, seed: 3, shards: 2, timeout: 5}\n")
    )
    assert job.fit_options() == {
        "epochs": 1,
        "batch_size": 16,
        "seed": 3,
        "shuffle": True,
        "shards": 2,
        "timeout": 5,
        "max_restarts": 2,
        "on_nonfinite": "stop",
        "class_weight": None,
    }
    x, y = make_classification(60, 4, 3, seed=0)
    model = job.build_model()
    history = model.fit(x, y, verbose=0, **job.fit_options())
    assert len(history.history["loss"]) == 1 and history.params["seed"] == 3 and history.params["shards"] == 2


def test_data_gives_sources_for_fit(tmp_path):
    job = load_job(write(tmp_path, "job.yaml", MINIMAL + "  validation: {split: 0.25}\n"))
    data = job.data()
    assert set(data) == {"x", "y", "validation_data", "validation_split"}
    assert (data["validation_split"], data["validation_data"]) == (0.25, None)
    x, y = data["x"], data["y"]
    assert x.read(0, 60).shape == (60, 4) and y.read(0, 60).shape == (60, 3)
    assert np.array_equal(y.read(0, 60).sum(axis=1), np.ones(60))  # one-hot, as categorical_crossentropy takes
    model = job.build_model()
    model.fit(x.read(0, 60), y.read(0, 60), verbose=0, validation_split=data["validation_split"], **job.fit_options())

    np.save(tmp_path / "x.npy", np.zeros((4, 2)))
    np.save(tmp_path / "y.npy", np.zeros((4, 3)))
    np.savez(tmp_path / "v.npz", a=np.ones((2, 2)), b=np.ones((2, 3)))
    files = MINIMAL.replace(
        "{format: synthetic, samples: 60, features: 4, classes: 3}", "{format: npy, x: x.npy, y: y.npy}"
    )
    data = load_job(
        write(tmp_path, "files.yaml", files + "  validation: {format: npz, path: v.npz, x: a, y: b}\n")
    ).data()
    assert data["x"].read(0, 4).shape == (4, 2) and data["y"].read(0, 4).shape == (4, 3)
    vx, vy = data["validation_data"]
    assert vx.read(0, 2).shape == (2, 2) and vy.read(0, 2).shape == (2, 3)
    assert data["validation_split"] == 0.0


def test_validation_imports_no_table_readers():
    """`dtrain validate` stays fast: checking a CSV job does not import dask.dataframe, pandas, pyarrow."""
    code = (
        "import sys\n"
        "from dtrain.jobs.spec import load_job\n"
        f"load_job({str(EXAMPLES / 'digits.yaml')!r})\n"
        "print(sorted(m for m in ('dask.dataframe', 'pandas', 'pyarrow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the example job files ------------------------------------------------------------------------------------


def test_seed_network_example_validates():
    job = load_job(EXAMPLES / "seed_network.yaml")
    assert [layer["units"] for layer in job.spec["model"]["layers"]] == [64, 10]
    assert job.spec["data"]["train"]["features"] == 100 and job.spec["data"]["validation"] == {"split": 0.2}
    assert job.output_dir == str(ROOT / "runs" / "seed_network")
    assert job.fit_options()["epochs"] == 5 and job.fit_options()["batch_size"] == 32


def test_digits_example_validates_and_reaches_95_percent():
    job = load_job(EXAMPLES / "digits.yaml")
    assert job.spec["data"]["train"]["path"] == str(ROOT / "examples" / "data" / "digits.csv")
    assert job.output_dir == str(ROOT / "runs" / "digits")
    table = np.loadtxt(job.spec["data"]["train"]["path"], delimiter=",", skiprows=1)
    assert table.shape == (1797, 65)
    x, y = table[:, :64], table[:, 64].astype(np.int64)
    assert x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    model = job.build_model()
    history = model.fit(x, y, verbose=0, validation_split=job.spec["data"]["validation"]["split"], **job.fit_options())
    assert history.history["val_accuracy"][-1] >= 0.95


@pytest.mark.parametrize(
    "cluster,path,message",
    [
        ("  elastic: true\n", "cluster.elastic", "needs fit.shards"),
        ("  max_workers: 3\n", "cluster.max_workers", "set cluster.elastic: true as well"),
        ("  elastic: true\n  workers: 2\n", "cluster.workers", "leave cluster.workers out"),
        ("  elastic: true\n  min_workers: 3\n  max_workers: 2\n", "cluster.max_workers", "below cluster.min_workers"),
        ("  elastic: yes please\n", "cluster.elastic", ""),
    ],
)
def test_elastic_settings_are_checked(tmp_path, cluster, path, message):
    problems = problems_of(write(tmp_path, "job.yaml", MINIMAL + "cluster:\n" + cluster))
    assert message in str(find(problems, path))


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "a" * 101])
def test_a_job_name_is_a_plain_name(tmp_path, name):
    """A job named ".." wrote its outputs into the job file's own folder (runs/..)."""
    problems = problems_of(write(tmp_path, "job.yaml", f"name: '{name}'\n" + MINIMAL))
    assert "starts with a letter or digit" in find(problems, "name").message


def test_a_default_name_from_a_hidden_file_is_plain(tmp_path):
    assert load_job(write(tmp_path, ".hidden job.yaml", MINIMAL)).name == "hidden-job"


def test_class_weight_and_optimizer_options_in_job_files(tmp_path):
    """fit.class_weight and an optimizer's Keras common arguments and schedule reach fit; bad
    ones are problems at their paths."""
    text = MINIMAL.replace(
        "  loss: categorical_crossentropy\n",
        "  loss: categorical_crossentropy\n  optimizer: {name: adamw, clipnorm: 1.0,"
        " learning_rate: {schedule: cosine_decay, initial_learning_rate: 0.01, decay_steps: 20}}\n",
    )
    job = load_job(write(tmp_path, "ok.yaml", text + "fit: {class_weight: {0: 1.0, 2: 4.0}}\n"))
    assert job.fit_options()["class_weight"] == {0: 1.0, 2: 4.0}
    config = job.fit_config()
    assert config.class_weights == {0: 1.0, 2: 4.0}
    optimizer = dtrain.optimizers.get(job.spec["compile"]["optimizer"])
    assert optimizer.clipnorm == 1.0 and isinstance(optimizer.schedule, dtrain.optimizers.schedules.CosineDecay)
    bad = write(
        tmp_path,
        "bad.yaml",
        text.replace("clipnorm: 1.0", "clipnorm: 1.0, clipvalue: 2.0")
        + "fit: {class_weight: {0: -1.0, 5: 2.0, x: 1.0}}\n",
    )
    problems = problems_of(bad)
    assert "Only one of clipnorm, clipvalue and global_clipnorm" in find(problems, "compile.optimizer").message
    assert "expected a weight >= 0" in find(problems, "fit.class_weight.0").message
    assert "class 5 is not one of the model's classes 0 .. 2" in find(problems, "fit.class_weight.5").message
    assert "expected a class index" in find(problems, "fit.class_weight.x").message
