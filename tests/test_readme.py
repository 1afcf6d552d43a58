"""What the README states that can be checked without measuring: the performance table's ratios are the
quotients of the figures they quote, every ``tinygpt`` command the docs show parses as written, and the run
directory it draws is the one a run writes."""

import os
import re
import shlex
from pathlib import Path

import pytest

from tinygpt import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {name: (ROOT / name).read_text(encoding="utf-8") for name in ("README.md", "data/README.md")}


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


def first_alternatives(command: str) -> str:
    """``[A | B]`` -> ``A``, ``[A]`` -> ``A``: an optional part is kept, with its first alternative."""
    return re.sub(r"\[([^\]]*)\]", lambda optional: optional.group(1).split(" | ")[0], command)


def commands(text: str) -> list[str]:
    """Every ``tinygpt ...`` command of a document: the shell lines of its code blocks (fenced or indented,
    split at pipes and ``&&``) and its inline code spans, where ``A | B`` offers alternatives (the first is
    taken) and ``[...]`` an optional part (kept)."""
    found = []
    shell = re.findall(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    shell += re.findall(r"^    (tinygpt .*)$", text, re.MULTILINE)
    for block in shell:
        for line in block.splitlines():
            line = line.split(" #", 1)[0]
            found += [first_alternatives(part.strip()) for part in re.split(r"\s(?:\||&&)\s", line)]
    for span in re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)):
        span = " ".join(span.split())  # a span may wrap onto the next line
        span = first_alternatives(span)
        if " --" in span:  # an invocation; without flags, the name of a command ("`tinygpt finetune` uses")
            found.append(span.split(" | ")[0])
    return [c for c in found if c.startswith("tinygpt ")]


@pytest.fixture
def exact_parser(monkeypatch):
    """The CLI's parser, taking only whole flag names: the command line accepts "--repeat" for "--repeats",
    but a document that shows it would show a flag that does not exist."""
    init = cli._Parser.__init__
    monkeypatch.setattr(cli._Parser, "__init__", lambda self, *args, **kwargs: init(
        self, *args, **{**kwargs, "allow_abbrev": False}))
    return cli.build_parser()


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_command_in_the_docs_parses(doc, exact_parser):
    shown = commands(DOCS[doc])
    assert len(shown) >= {"README.md": 30, "data/README.md": 2}[doc]  # the parsing below must find them
    for command in shown:
        # "a|b" offers values ("--pattern gpt2|gpt4", "--data FILE.jsonl|csv"): try the first
        # and "N" stands for a number ("--isolate N")
        argv = ["3" if word == "N" else word.split("|")[0] for word in shlex.split(command)[1:]]
        try:
            exact_parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")


def test_the_run_directory_shown_is_what_a_run_writes(tmp_path, monkeypatch):
    # the Training section's layout of DIR after a checkpoint at step 250 (the default --eval-interval):
    # the step folder's name and files, the latest link, what DIR holds, and the metrics row's fields
    from tinygpt import train

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    section = README.split("## Training", 1)[1].split("\n## ", 1)[0]
    fields = re.search(r"`DIR/metrics\.jsonl` \(([^)]*)\), then a checkpoint:", section)[1]
    layout = section.split("then a checkpoint:\n\n", 1)[1].split("\n\n", 1)[0]
    step_dir, step_files = re.search(r"DIR/checkpoints/(\S+)/(.*)DIR/latest", layout, re.DOTALL).groups()
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question.\n" * 20)
    out = tmp_path / "DIR"
    train.train(train.make_config({"data": str(data), "out": str(out), "n_layer": 1, "n_head": 2, "n_embd": 8,
                                   "block_size": 4, "batch_size": 1, "eval_iters": 1, "max_iters": 250,
                                   "eval_interval": 250, "backend": "numpy"}), quiet=True)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [step_dir]
    assert sorted(p.name for p in (out / "checkpoints" / step_dir).iterdir()) == sorted(
        re.findall(r"[\w.]+\.(?:safetensors|json)\b", step_files))
    assert os.readlink(out / "latest") == re.search(r"DIR/latest -> (\S+)", layout)[1]
    shown = set(re.findall(r"DIR/([\w.]+)", layout)) - {"checkpoints", "latest", "model.safetensors"}
    assert shown <= {p.name for p in out.iterdir() if not p.is_symlink()}
    links = {p.name for p in out.iterdir() if p.is_symlink() and p.name != "latest"}
    assert links == set(re.findall(r"[\w.]+\.(?:safetensors|json)\b", step_files))  # "link through it"
    assert all(os.readlink(out / name) == f"latest/{name}" for name in links)
    assert list(train.read_metrics(out / "metrics.jsonl")[-1]) == fields.split(", ")
