"""Store notebooks without outputs: clear every code cell's outputs and execution count,
drop per-cell run metadata (execution times, collapsed/scrolled state) and reduce the
notebook metadata to the kernel (python3) and the language.

    python notebooks/strip_outputs.py                 # strip notebooks/*.ipynb in place
    python notebooks/strip_outputs.py a.ipynb b.ipynb  # strip the files named
    python notebooks/strip_outputs.py --check          # exit 1 if any is not clean

Needs nbformat (installed with Jupyter).
"""

import argparse
import glob
import os
import sys

import nbformat

KERNELSPEC = {
    "name": "python3",
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
}
LANGUAGE_INFO = {"name": "python"}
# Cell metadata that a run or an editor adds; anything else (tags, ...) is kept.
RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime", "jupyter")


def stripped(notebook):
    """A copy of ``notebook`` (a NotebookNode) without outputs and run metadata."""
    notebook = nbformat.from_dict(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in RUN_METADATA:
            cell.metadata.pop(key, None)
    notebook.metadata = nbformat.from_dict(
        {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    )
    return notebook


def is_clean(path):
    """True when the file at ``path`` is already stored as :func:`stripped` writes it."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    notebook = nbformat.reads(text, as_version=4)
    return nbformat.writes(stripped(notebook)) + "\n" == text


def strip_file(path):
    """Strip ``path`` in place; returns True when the file changed."""
    if is_clean(path):
        return False
    notebook = nbformat.read(path, as_version=4)
    clean = stripped(notebook)
    nbformat.validate(clean)
    with open(path, "w", encoding="utf-8") as f:
        f.write(nbformat.writes(clean) + "\n")
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 listing the notebooks not clean",
    )
    args = parser.parse_args(argv)
    paths = args.paths or sorted(
        glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "*.ipynb"))
    )
    if args.check:
        dirty = [p for p in paths if not is_clean(p)]
        for path in dirty:
            print(
                f"{path}: has outputs or run metadata; run "
                f"python notebooks/strip_outputs.py",
                file=sys.stderr,
            )
        return 1 if dirty else 0
    for path in paths:
        if strip_file(path):
            print(f"stripped {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
