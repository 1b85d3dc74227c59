"""The notebooks run top to bottom and their assertions hold (code cells executed in order in a
fresh Python process, with a non-interactive plotting backend; no Jupyter needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    pytest.importorskip("matplotlib")
    cells = json.loads(notebook.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    (tmp_path / f"{notebook.stem}_cells.py").write_text(code)
    # Dask starts worker processes with "spawn", which re-imports the main script: run the cells
    # from a guarded entry point, as a notebook kernel (which has no script) effectively does.
    script = tmp_path / "run_notebook.py"
    script.write_text(f"import runpy\nif __name__ == '__main__':\n    runpy.run_path({notebook.stem + '_cells.py'!r}, run_name='notebook')\n")
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
