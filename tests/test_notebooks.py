"""The notebooks run top to bottom and their assertions hold (code cells executed in order in a
fresh Python process started in notebooks/, as a kernel would be, with a non-interactive plotting
backend, DTRAIN_NOTEBOOK_QUICK=1, the notebooks' small setting, and DTRAIN_NOTEBOOK_RESULTS, where
a notebook saves its results; no Jupyter needed). They are valid notebooks by nbformat's own
validator, every cell with an id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    pytest.importorskip("matplotlib")
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    (tmp_path / f"{notebook.stem}_cells.py").write_text(code)
    # Dask starts worker processes with "spawn", which re-imports the main script: run the cells
    # from a guarded entry point, as a notebook kernel (which has no script) effectively does.
    script = tmp_path / "run_notebook.py"
    cells_file = str(tmp_path / f"{notebook.stem}_cells.py")
    script.write_text(
        f"import runpy\nif __name__ == '__main__':\n    runpy.run_path({cells_file!r}, run_name='notebook')\n"
    )
    results = tmp_path / "results"
    env = dict(os.environ, MPLBACKEND="Agg", DTRAIN_NOTEBOOK_QUICK="1", DTRAIN_NOTEBOOK_RESULTS=str(results))
    before = set(notebook.parent.iterdir())
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=notebook.parent, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert set(notebook.parent.iterdir()) == before, "a notebook left files in notebooks/"
    if notebook.stem == "02_scaling":  # its results, saved where it was told
        saved = json.loads((results / "scaling.json").read_text())
        repeats, summary = saved["parameters"]["repeats"], saved["summary"]
        assert repeats >= 2 and summary and all(row["runs"] == repeats for row in summary)
        assert len(saved["runs"]) == len(summary) * repeats and saved["steps"] and saved["time_to_target"]
        for name in ("summary.csv", "runs.csv", "steps.csv", "time_to_target.csv"):
            assert len((results / name).read_text().splitlines()) > 1, name
        assert {p.name for p in results.glob("*.png")} == {"scaling.png", "steps.png", "time_to_target.png"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(notebook):
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, notebook.name


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_valid_and_every_cell_has_an_id(notebook):
    """nbformat's validator, with its warnings about missing or repeated cell ids (which it
    repairs in the copy it reads, and which are to become errors) as failures."""
    import nbformat
    from nbformat.warnings import DuplicateCellId, MissingIDFieldWarning

    text = notebook.read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingIDFieldWarning)
        warnings.simplefilter("error", DuplicateCellId)
        nbformat.validate(nbformat.reads(text, as_version=nbformat.NO_CONVERT))
    as_written = json.loads(text)
    assert (as_written["nbformat"], as_written["nbformat_minor"]) >= (4, 5)  # the versions with cell ids
    ids = [cell.get("id") for cell in as_written["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), ids
