"""Every teaching notebook runs top to bottom in a fresh kernel, and is committed executed.

Each notebook is executed by nbclient in a temporary copy of ``notebooks/`` (with its ``data/``), so a run
never rewrites the committed outputs. A cell that raises fails the test, and the notebooks' own asserts
(hand derivations against the library) make drift between them and the library fail here too. Every figure
a notebook shows is checked as it is drawn: each panel's axes must say what they show.
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

# Run in the notebook's kernel before its first cell: every figure it shows (plt.show or a cell's last
# figure, both end in FigureCanvasBase.print_figure) is checked once drawn, and each panel with data whose x
# or y axis says nothing is listed: no label, no labelled axis it shares (sharey panels), and numeric ticks
# (bar categories and characters as tick labels name the values themselves). Image panels (heatmaps, whose
# axes are positions, with the title saying what the colours are), colorbars and hidden axes are exempt.
# Only matplotlib is imported: notebook 06 must set NUMBA_ENABLE_CUDASIM before anything imports numba.
AXIS_LABEL_CHECK = """
from matplotlib import ticker as _ticker
from matplotlib.backend_bases import FigureCanvasBase as _Canvas

_panels_without_labels = []
_print_figure = _Canvas.print_figure


def _says_what_it_shows(ax, which):
    label = ax.get_xlabel if which == "x" else ax.get_ylabel
    if label():
        return True
    shared = ax.get_shared_x_axes() if which == "x" else ax.get_shared_y_axes()
    if any((a.get_xlabel() if which == "x" else a.get_ylabel()) for a in shared.get_siblings(ax)):
        return True
    axis = ax.xaxis if which == "x" else ax.yaxis
    numeric = isinstance(axis.get_major_formatter(), (_ticker.ScalarFormatter, _ticker.LogFormatter))
    return not numeric and any(tick.get_text() for tick in axis.get_ticklabels())


def _checked_print_figure(self, *args, **kwargs):
    result = _print_figure(self, *args, **kwargs)  # drawn first: tick labels have their text
    for ax in self.figure.axes:
        if not ax.axison or ax.images or hasattr(ax, "_colorbar"):
            continue
        if ax.lines or ax.patches or ax.collections:
            title = ax.get_title() or f"untitled, x label {ax.get_xlabel()!r}"
            for which in ("x", "y"):
                if not _says_what_it_shows(ax, which):
                    _panels_without_labels.append(f"panel {title!r}: its {which} axis has no label")
    return result


_Canvas.print_figure = _checked_print_figure
"""


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
    nb.cells.insert(0, nbformat.v4.new_code_cell(AXIS_LABEL_CHECK))
    nb.cells.append(nbformat.v4.new_code_cell("assert not _panels_without_labels, _panels_without_labels"))
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
