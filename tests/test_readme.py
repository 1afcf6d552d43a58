"""What the README states that can be checked without measuring: the performance tables' ratios are the
quotients of the figures they quote, every ``tinygpt`` command the docs show parses as written, the run
directory it draws is the one a run writes, the module table maps the package and the files, names and
notebooks the docs point to exist, the output lines it quotes are what the commands print, and every Python
example runs and shows what its comments say."""

import argparse
import ast
import importlib
import io
import json
import math
import os
import re
import shlex
import shutil
import tokenize
from pathlib import Path

import numpy as np
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


def figures(cell: str) -> list[str]:
    """The numbers of a cell as printed: "numpy 12,071; numba 20,583" -> ["12,071", "20,583"]."""
    return re.findall(r"\d[\d,]*(?:\.\d+)?", without_asides(cell))


def bounds(figure: str) -> tuple[float, float]:
    """What a printed figure may have been before it was rounded: "2.99" -> (2.985, 2.995)."""
    value = float(figure.replace(",", ""))
    half = 0.5 * 10.0 ** -len(figure.partition(".")[2])
    return value - half, value + half


def performance_tables() -> dict[str, list[list[str]]]:
    """The cells of each row (what, tinygpt, peer, ratio, goal, command) of the README's performance tables,
    by the first cell of their header: the development machine's and the Intel Xeon's."""
    header = r"^\| (what|benchmark[^|]*) \| tinygpt \| peer \| ratio \|.*\n\|[-|]+\|\n((?:\|.*\n)+)"
    return {table[1].strip(): [line.strip().strip("|").split("|") for line in table[2].splitlines()]
            for table in re.finditer(header, README, re.MULTILINE)}


def test_performance_ratios_are_the_quotients_of_the_figures_they_quote():
    # a bench prints the ratio of its unrounded figures (bench train: 18,214.4 / 5,809.6 tokens/s is 3.14x,
    # beside 18,214 and 5,810), so a ratio must be the quotient of figures that round to those shown
    tables = performance_tables()
    assert len(tables) == 2, f"the README's performance tables are not all found: {sorted(tables)}"
    checked = 0
    for rows in tables.values():
        for what, ours_cell, peer_cell, ratio_cell, *_ in rows:
            ratios = re.findall(r"(\d+\.\d+)x", without_asides(ratio_cell))  # as printed: "1.91x; 3.25x"
            if not ratios or re.match(r"\s*[a-zA-Z]", without_asides(ratio_cell)):
                continue  # no ratio, or one of a part the cell names ("attention 0.56x our time"): by eye
            ours, peer = figures(ours_cell), figures(peer_cell)
            n = max(len(ours), len(peer), len(ratios))
            if not ours or not peer or any(n % len(column) for column in (ours, peer, ratios)):
                continue  # a row of several figures per side (the recipe's): read by eye
            for i in range(n):  # a column of k figures pairs row i with its figure i mod k: one figure
                # stands for every row, a peer's two runs ("6,679 and 5,810") for each backend's two
                a, b, shown = (column[i % len(column)] for column in (ours, peer, ratios))
                (a_low, a_high), (b_low, b_high), (low, high) = bounds(a), bounds(b), bounds(shown)
                quotient = float(a.replace(",", "")) / float(b.replace(",", ""))
                assert a_low / b_high <= high and a_high / b_low >= low, (
                    f"{what.strip()}: {a} / {b} = {quotient:.4f}, shown as {shown}x")
            checked += 1
    assert checked >= 23  # every row with a ratio per pair of figures: a changed table must not skip them


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


def train_tiny_run(data: Path, out: Path, **settings) -> None:
    """A character-level run of a 1-layer, 8-wide model on ``data`` into ``out``, as `tinygpt train` writes
    one (its token cache beside ``out``, not in the user's)."""
    from tinygpt import train

    values = {"data": str(data), "out": str(out), "n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 4,
              "batch_size": 1, "eval_iters": 1, "backend": "numpy", **settings}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TINYGPT_CACHE", str(out.parent / "cache"))
        train.train(train.make_config(values), quiet=True)


def test_the_run_directory_shown_is_what_a_run_writes(tmp_path):
    # the Training section's layout of DIR after a checkpoint at step 250 (the default --eval-interval):
    # the step folder's name and files, the latest and best links, what DIR holds, the metrics row's fields
    from tinygpt import train

    section = README.split("## Training", 1)[1].split("\n## ", 1)[0]
    fields = re.search(r"`DIR/metrics\.jsonl` \(([^)]*)\), then a checkpoint:", section)[1]
    layout = section.split("then a checkpoint:\n\n", 1)[1].split("\n\n", 1)[0]
    step_dir, step_files = re.search(r"DIR/checkpoints/(\S+)/(.*)DIR/latest", layout, re.DOTALL).groups()
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question.\n" * 20)
    out = tmp_path / "DIR"
    train_tiny_run(data, out, max_iters=250, eval_interval=250)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [step_dir]
    assert sorted(p.name for p in (out / "checkpoints" / step_dir).iterdir()) == sorted(
        re.findall(r"[\w.]+\.(?:safetensors|json)\b", step_files))
    assert os.readlink(out / "latest") == re.search(r"DIR/latest -> (\S+)", layout)[1]
    # DIR/best: a link of the same form (here to step 250 too: its val loss is below step 0's)
    assert re.fullmatch(r"checkpoints/step-\d{8}", re.search(r"DIR/best -> (\S+)", layout)[1])
    assert os.readlink(out / "best") == os.readlink(out / "latest")
    shown = set(re.findall(r"DIR/([\w.]+)", layout)) - {"checkpoints", "latest", "best", "model.safetensors"}
    assert shown <= {p.name for p in out.iterdir() if not p.is_symlink()}
    links = {p.name for p in out.iterdir() if p.is_symlink() and p.name not in ("latest", "best")}
    assert links == set(re.findall(r"[\w.]+\.(?:safetensors|json)\b", step_files))  # "link through it"
    assert all(os.readlink(out / name) == f"latest/{name}" for name in links)
    assert list(train.read_metrics(out / "metrics.jsonl")[-1]) == fields.split(", ")


def test_the_notebook_accuracies_quoted_are_its_stored_outputs():
    # the README quotes notebook 07's speaker-identification accuracies; a re-executed notebook prints new
    # ones (bc17fa9's re-run made from scratch 0.386), and the README's figures must follow
    quoted = re.search(r"\(speaker\s+identification: (\d\.\d+) fine-tuned, (\d\.\d+) from scratch, "
                       r"(\d\.\d+) majority\)", README)
    assert quoted, "the README no longer quotes notebook 07's accuracies in the form this test reads"
    notebook = json.loads((ROOT / "notebooks" / "07_finetuning.ipynb").read_text(encoding="utf-8"))
    printed = "".join("".join(out.get("text", "")) for cell in notebook["cells"]
                      for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    stored = [re.search(rf"^{name} +val accuracy (\d\.\d+)", printed, re.MULTILINE)[1]
              for name in ("fine-tuned", "from scratch", "majority")]
    assert list(quoted.groups()) == stored


def test_the_defaults_quoted_are_the_defaults():
    # what `tinygpt train` runs with no arguments, what a TOML file's missing keys take, and finetune's
    # validation share: a default changed in the code must not leave the README quoting the old one
    from tinygpt import finetune, train

    prose = " ".join(README.split())
    preset = train.read_config_file("default")
    quoted = re.search(r"Command 1 fetches the default corpus .*? trains ([\d,]+) steps into `(\w+)/`", prose)
    assert quoted, "the README no longer says what command 1 trains in the form this test reads"
    assert (int(quoted[1].replace(",", "")), quoted[2]) == (preset["max_iters"], preset["out"])
    main_job = re.search(r"The main job \(`tinygpt train`, ([\d,]+) steps on the default corpus", prose)
    assert main_job and int(main_job[1].replace(",", "")) == preset["max_iters"]
    missing = re.search(r"whose missing keys take `TrainConfig`'s defaults: the default preset's, but "
                        r"`max_iters` (\d+) and", prose)
    assert missing and int(missing[1]) == train.TrainConfig().max_iters
    share = re.search(r"a stratified `--val-fraction` of each class \((\d\.\d+);", prose)
    assert share and float(share[1]) == finetune.FinetuneConfig.val_fraction


def subcommands(parser) -> dict[str, object]:
    """A parser's sub-commands: name -> its parser."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def module_table() -> dict[tuple[Path, ...], str]:
    """The README's "What is in it" table: the paths each row names (``checkpoint.py`` after
    ``tinygpt/train.py`` is ``tinygpt/checkpoint.py``) -> what the row says it does."""
    table = README.split("| module | what it does |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines():
        names, what = line.strip().strip("|").split("|")
        paths = []
        for name in re.findall(r"`([^`]+)`", names):
            paths.append(Path(name) if "/" in name else paths[-1].parent / name)
        rows[tuple(paths)] = what
    return rows


def test_the_module_table_names_every_module_and_what_exists():
    # a module added, moved or renamed must not leave the newcomer's map of the package behind it
    rows = module_table()
    named = {path for paths in rows for path in paths}
    for path in named:
        assert (ROOT / path).exists(), f"the README's module table names {path}, which does not exist"
    package = ROOT / "tinygpt"
    modules = {p.relative_to(ROOT) for p in package.iterdir()
               if p.name not in ("__init__.py", "__main__.py") and not p.name.startswith(".")
               and (p.suffix == ".py" or p.is_dir() and p.name != "__pycache__")}
    assert modules <= named, f"not in the README's module table: {sorted(map(str, modules - named))}"
    for paths, what in rows.items():  # a folder's row names its modules: kernels/'s cpu.py, cuda.py, ...
        folder = paths[0]
        if len(paths) > 1 or not (ROOT / folder).is_dir() or folder.parts[0] != "tinygpt":
            continue
        if folder.name == "bench":
            continue  # its row names its commands, checked below
        # (not a hidden file: vim's .cpu.py.swp while cpu.py is open, macOS's .DS_Store, are no module)
        files = {p.name for p in (ROOT / folder).iterdir()
                 if p.is_file() and p.name != "__init__.py" and not p.name.startswith(".")}
        shown = set(re.findall(r"`([\w.]+\.(?:py|toml))`", what))
        shown |= {f"{name}.toml" for name in re.findall(r"`(\w+)`", what)} & files  # the presets by name
        assert shown == files, f"{folder}: the README names {sorted(shown)}, the folder holds {sorted(files)}"
    parser = cli.build_parser()
    commands = subcommands(parser)
    cli_row = rows[(Path("tinygpt/cli.py"),)]
    assert set(re.findall(r"`(\w+)`", cli_row)) - {"tinygpt"} == set(commands), "tinygpt's commands"
    bench_row = rows[(Path("tinygpt/bench"),)]
    assert set(subcommands(commands["bench"])) <= set(re.findall(r"\w+", bench_row)), "tinygpt bench's"


def test_the_files_and_python_names_the_docs_point_to_exist():
    for doc, text in DOCS.items():
        spans = {" ".join(span.split()) for span in re.findall(
            r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))}
        # paths in this repository (data/'s others are nanoGPT's and HellaSwag's: data/*/prepare.py)
        ours = r"(python )?((tinygpt|tests|notebooks|\.ci)/\S*|data/(\w+\.(md|py))?)"
        paths = {span.removeprefix("python ") for span in spans if re.fullmatch(ours, span)}
        paths |= {f"notebooks/{span}.ipynb" for span in spans if re.fullmatch(r"0\d_\w+", span)}
        paths |= set(re.findall(r"^ *python (\S+\.py)", text, re.MULTILINE))  # the scripts code blocks run
        assert len(paths) >= {"README.md": 30, "data/README.md": 3}[doc]  # the reading finds them
        for path in paths:
            assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"
        for name in {span for span in spans if re.match(r"tinygpt\.\w", span)}:
            # `tinygpt.errors.TinyGPTError`, `tinygpt.hellaswag.evaluate(model, tokenizer, path, limit=None)`
            parts = name.split("(")[0].split(".")
            for end in range(len(parts), 0, -1):  # the longest module it starts with, then its attributes
                try:
                    value = importlib.import_module(".".join(parts[:end]))
                    break
                except ImportError:
                    continue
            for part in parts[end:]:
                assert hasattr(value, part), f"{doc} names {name}, which does not exist"
                value = getattr(value, part)


def test_the_notebooks_the_docs_list_are_the_notebooks():
    # notebooks/README.md's table lists each by name, the README counts them; a notebook added or renamed
    # must show in both
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    guide = (ROOT / "notebooks" / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"^\| `(\w+)` \|", guide, re.MULTILINE) == notebooks
    numbers = "one two three four five six seven eight nine ten eleven twelve".split()
    for doc, text in (("README.md", README), ("notebooks/README.md", guide)):
        counts = re.findall(r"\b(\w+) (?:executed )?notebooks\b", " ".join(text.split()).lower())
        counted = [word for word in counts if word in numbers]
        assert counted, f"{doc} no longer counts the notebooks in the form this test reads"
        assert counted == [numbers[len(notebooks) - 1]] * len(counted), f"{doc}: {counted}"
    for path in re.findall(r"`((?:data|tests)/[\w./]+)`", guide):  # data/ in notebooks/, tests/ at the root
        assert (ROOT / "notebooks" / path).exists() or (ROOT / path).exists(), path


# --- the Python examples ---------------------------------------------------------------------------------

EXAMPLE_DOCS = ("README.md", "data/README.md", "notebooks/README.md")


def python_examples() -> list[tuple[str, int, str, str]]:
    """Every ```python block of the docs: (document, line of its first line of code, the ``## `` section it
    is in, its code)."""
    found = []
    for doc in EXAMPLE_DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for block in re.finditer(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            before = text[: block.start()]
            sections = re.findall(r"^## (.+)$", before, re.MULTILINE)
            found.append((doc, before.count("\n") + 2, sections[-1] if sections else "", block[1]))
    return found


EXAMPLES = python_examples()


@pytest.fixture(scope="module")
def stand_ins(pretrained_dir, tmp_path_factory):
    """What the examples take from the reader's world, by the path they name it with: an example runs in a
    fresh directory holding a copy of each of these that it names, so it runs as printed, not one word
    changed."""
    excerpt = ROOT / "notebooks" / "data" / "shakespeare_excerpt.txt"
    run = tmp_path_factory.mktemp("run") / "out"
    train_tiny_run(excerpt, run, block_size=16, max_iters=2, eval_interval=2)
    return {
        # 90 KB of the plays: enough words for the Tokenizer example's 3,839 merges (vocab 4096, reached
        # exactly) in a fraction of a second
        "input.txt": excerpt,
        # a tiny GPT-2 of GPT-2's vocabulary, written by transformers, for the real one's 500 MB
        "path/to/gpt2": pretrained_dir[0],
        # what `tinygpt train` leaves in out/: 2 steps of a 1-layer character model on the same excerpt
        "out": run,
    }


def shown_values(code: str) -> dict[int, object]:
    """The values an example shows in comments: line -> the Python literal commented at the end of an
    expression statement (``gpt2.encode(...)  # [31373, 220, 50256]``), lines counted from 1 in ``code``."""
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    remarks = {t.start[0]: t.string.lstrip("#").strip() for t in tokens if t.type == tokenize.COMMENT}
    shown = {}
    for statement in ast.parse(code).body:
        if isinstance(statement, ast.Expr) and statement.end_lineno in remarks:
            try:
                shown[statement.end_lineno] = ast.literal_eval(remarks[statement.end_lineno])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                pass  # prose ("# ~1e-10"): CLAIMS checks what it says
    return shown


def run_example(code: str, doc: str, first_line: int, namespace: dict) -> dict[int, tuple[str, object]]:
    """Run ``code`` a statement at a time, as a reader typing it into Python would; return each expression
    statement's value with its code, by its last line in ``code``. Line numbers are the document's, so a
    failure's traceback points into the README."""
    filename = str(ROOT / doc)
    values = {}
    for statement in ast.increment_lineno(ast.parse(code), first_line - 1).body:
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), filename, "eval"), namespace)
            values[statement.end_lineno - first_line + 1] = ast.unparse(statement.value), value
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), filename, "exec"), namespace)
    return values


def value_of(values, call: str):
    """The value of the example's expression statement that calls ``call``."""
    (value,) = [value for code, value in values.values() if code.startswith(call + "(")]
    return value


def model_claims(code, namespace, values, printed):
    import transformers

    # each claim checked is quoted, so that a README saying something else fails here until this says it too
    assert "(12, 64, 65); loss ≈ log 65 = 4.17" in code
    assert namespace["logits"].shape == (12, 64, 65)
    assert f"{math.log(65):.2f}" == "4.17" and namespace["loss"] == pytest.approx(math.log(65), rel=0.02)
    assert "# GPT-2 init, float32;" in code
    grads, params = namespace["grads"], namespace["model"].params
    assert all(p.dtype == np.float32 for p in params.values())
    assert "# same names/shapes as model.params" in code
    assert {name: g.shape for name, g in grads.items()} == {name: p.shape for name, p in params.items()}
    assert 'model.save_pretrained("out/hf")' in code and "# loads in transformers.GPT2LMHeadModel" in code
    hf = transformers.GPT2LMHeadModel.from_pretrained("out/hf")
    assert (hf.transformer.wte.weight.detach().numpy() == params["wte.weight"]).all()
    assert '{"qkv": qkv}, kwargs={"n_head": 2})  # ~1e-10' in code  # attention's relative error
    assert max(value_of(values, "gradcheck").values()) < 1e-8


def generate_claims(code, namespace, values, printed):
    # the prompt, then 200 characters (the stand-in run is character-level: a token is a character)
    assert 'tok.encode("ROMEO:")]), 200,' in code
    assert printed.startswith("ROMEO:") and len(printed) == len("ROMEO:") + 200 + len("\n")


# what an example's comments claim that is not a literal value, by the section the example is in
CLAIMS = {"Model": model_claims, "Generating text": generate_claims}


def test_the_python_examples_are_found(stand_ins):
    # Tokenizer, Model, Generating text today: an empty list would pass the test below vacuously, and a
    # section renamed would leave its claims unchecked, a stand-in no example names is stale
    assert len(EXAMPLES) >= 3
    assert set(CLAIMS) <= {section for _, _, section, _ in EXAMPLES}
    # and the values shown in comments are found: the Tokenizer's `# [31373, 220, 50256]` at least
    assert [31373, 220, 50256] in [value for *_, code in EXAMPLES for value in shown_values(code).values()]
    assert all(any(f'"{name}' in code for *_, code in EXAMPLES) for name in stand_ins)


def as_pattern(quoted: str, placeholders: dict[str, str]) -> str:
    """A line the README quotes as a regular expression, its placeholders standing for what a run prints:
    ``as_pattern("acc A", {"A": r"\\d\\.\\d{4}"})`` -> ``acc\\ \\d\\.\\d{4}``."""
    pieces = re.split("(" + "|".join(rf"\b{re.escape(p)}\b" for p in placeholders) + ")", quoted)
    return "".join(placeholders[piece] if i % 2 else re.escape(piece) for i, piece in enumerate(pieces))


def test_the_lines_quoted_are_what_the_commands_print(stand_ins, tmp_path, monkeypatch, capsys):
    # the README quotes lines its commands print: a tokenizer's --show, eval --hellaswag's one line, and what
    # --hellaswag adds to a training step's line; each is read from the README and matched against a run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / ".cache"))
    shutil.copy(stand_ins["input.txt"], "input.txt")
    shutil.copytree(stand_ins["out"], "out", symlinks=True)
    prose = " ".join(README.split())

    # the Tokenizer section's commands: train on input.txt, then --show, whose comment is its first line
    block = README.split("\n## Tokenizer\n", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    train_line, show_line = block.splitlines()[:2]
    for command in (train_line, show_line.split(" # ", 1)[0]):
        argv = [word.split("|")[0] for word in shlex.split(first_alternatives(command))[1:]]
        assert cli.main(argv) == 0
        printed = capsys.readouterr().out
    assert printed.splitlines()[0] == show_line.split(" # ", 1)[1].strip()

    # eval --hellaswag's line, its figures A and B and the count (10,042 of the published file) any number
    line = re.search(r"prints one line: `(hellaswag: [^`]*)`", prose)
    assert line, "the README no longer quotes eval --hellaswag's line in the form this test reads"
    line = line[1]
    figure = r"\d\.\d{4}"
    examples = [{"ctx": "and so he", "endings": [" went", " came", " sat"], "label": i} for i in range(3)]
    Path("hellaswag_val.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    assert cli.main(["eval", "--out", "out", "--hellaswag", "hellaswag_val.jsonl", "--quiet"]) == 0
    assert re.fullmatch(as_pattern(line, {"10,042": "3", "A": figure, "B": figure}) + "\n",
                        capsys.readouterr().out)

    # a training step's line with --hellaswag
    part = re.search(r"the step line gains `([^`]*)` after the val loss, before the learning rate", prose)
    assert part, "the README no longer says what --hellaswag adds to a step line as this test reads it"
    part = part[1]
    argv = ["train", "--data", "input.txt", "--out", "run", "--hellaswag", "hellaswag_val.jsonl",
            "--max-iters", "1", "--eval-iters", "1", "--n-layer", "1", "--n-head", "2", "--n-embd", "8",
            "--block-size", "16", "--batch-size", "1", "--backend", "numpy"]
    assert cli.main(argv) == 0
    step_line = rf"step 0: train loss {figure}, val loss {figure}{as_pattern(part, {'A': figure})}, lr "
    assert re.search(step_line, capsys.readouterr().err)


@pytest.mark.parametrize("doc, line, section, code", EXAMPLES, ids=[f"{d}:{n}" for d, n, *_ in EXAMPLES])
def test_every_python_example_runs_and_shows_what_it_says(doc, line, section, code, stand_ins, tmp_path,
                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / ".cache"))  # nothing written to the user's cache
    for name, source in stand_ins.items():
        if f'"{name}' in code:  # a path the example opens: "out" for "out", "out/hf"
            target = tmp_path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)  # a run's links are relative: they still hold
            else:
                shutil.copy(source, target)
    namespace = {"__name__": "__main__"}
    values = run_example(code, doc, line, namespace)
    printed = capsys.readouterr().out
    for at, claimed in shown_values(code).items():
        expression, value = values[at]
        assert value == claimed, f"{doc}:{line + at - 1}: {expression} is {value!r}, its comment {claimed!r}"
    if section in CLAIMS:
        CLAIMS[section](code, namespace, values, printed)
