"""The notebooks run top to bottom and their assertions hold (code cells executed in order in a
fresh Python process started in notebooks/, as a kernel would be, with a non-interactive plotting
backend and DTRAIN_NOTEBOOK_QUICK=1, the notebooks' small setting; no Jupyter needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    env = dict(os.environ, MPLBACKEND="Agg", DTRAIN_NOTEBOOK_QUICK="1")
    before = set(notebook.parent.iterdir())
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=notebook.parent, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert set(notebook.parent.iterdir()) == before, "a notebook left files in notebooks/"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_committed_without_outputs(notebook):
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, notebook.name


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
