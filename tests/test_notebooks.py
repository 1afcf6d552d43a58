"""Every teaching notebook runs top to bottom in a fresh kernel, and is committed executed.

Each notebook is executed by nbclient in a temporary copy of ``notebooks/`` (with its ``data/``), so a run
never rewrites the committed outputs. A cell that raises fails the test, and the notebooks' own asserts
(hand derivations against the library) make drift between them and the library fail here too.
"""

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # generous: the slowest cell trains a small model for ~30 s on two idle cores


def _images(nb) -> int:
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_clean(name, tmp_path, monkeypatch):
    work = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS_DIR, work, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))  # the kernel inherits it: no writes to ~
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # The notebooks' matrices are small (64 wide): one BLAS thread does them as fast, and with other processes
    # on the cores OpenBLAS's thread hand-offs made a training step 13x slower (406 vs 31 ms, measured here).
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    nb = nbformat.read(work / name, as_version=4)
    for cell in nb.cells:  # run from a blank slate: the committed outputs must not mask a failure
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError naming the cell on any exception
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    assert _images(nb) >= 1, f"{name} draws no matplotlib figure"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_with_outputs(name):
    nb = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    unexecuted = [i for i, cell in enumerate(code) if cell.execution_count is None]
    assert not unexecuted, f"{name}: code cells {unexecuted} were not executed before committing"
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), (
        f"{name} was not run top to bottom in one fresh kernel"
    )
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert _images(nb) >= 1, f"{name} is committed without its figures"
    markdown = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    assert any("$" in source for source in markdown), f"{name} has no LaTeX math in its markdown"
    titles = [line for source in markdown for line in source.splitlines() if line.startswith("# ")]
    assert len(titles) == 1, f"{name} should have one '# ' title, has {len(titles)}: {titles[:3]}"


def test_notebooks_stay_small():
    sizes = {p.name: p.stat().st_size for p in NOTEBOOKS_DIR.glob("*.ipynb")}
    assert sizes, "no notebooks found"
    assert sum(sizes.values()) < 2_000_000, f"notebooks total {sum(sizes.values()):,} bytes: {sizes}"
