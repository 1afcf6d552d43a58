"""What the README states that can be checked without measuring: the performance table's ratios are the
quotients of the figures they quote."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def without_asides(cell: str) -> str:
    """A table cell without its code spans and (parenthesised asides), innermost first."""
    cell = re.sub(r"`[^`]*`", "", cell)
    while re.search(r"\([^()]*\)", cell):
        cell = re.sub(r"\([^()]*\)", "", cell)
    return cell


def figures(cell: str) -> list[float]:
    """The numbers of a cell, thousands separators dropped: "numpy 12,071; numba 20,583" -> [12071, 20583]."""
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?", without_asides(cell))]


def performance_rows() -> list[list[str]]:
    """The cells of each row of the README's performance table (what, tinygpt, peer, ratio, goal, command)."""
    table = README.split("| what | tinygpt | peer | ratio | goal | command |", 1)[1].split("\n\n", 1)[0]
    return [line.strip().strip("|").split("|") for line in table.strip().splitlines()[1:]]


def test_performance_ratios_are_the_quotients_of_the_figures_they_quote():
    checked = 0
    for what, ours_cell, peer_cell, ratio_cell, *_ in performance_rows():
        ratios = re.findall(r"(\d+\.\d+)x", without_asides(ratio_cell))  # as printed: "1.91x; 3.25x"
        ours, peer = figures(ours_cell), figures(peer_cell)
        if not ratios:
            continue
        n = max(len(ours), len(peer), len(ratios))
        if any(len(column) not in (1, n) for column in (ours, peer, ratios)):
            continue  # a row of several figures per side (the recipe's): read by eye
        for i in range(n):  # a column of one figure stands for every row of the others
            a, b, shown = (column[min(i, len(column) - 1)] for column in (ours, peer, ratios))
            decimals = len(shown.split(".")[1])
            assert f"{a / b:.{decimals}f}" == shown, f"{what.strip()}: {a:g} / {b:g} = {a / b:.4f}"
        checked += 1
    assert checked >= 10  # every row with one figure per side and ratio: a changed table must not skip them
