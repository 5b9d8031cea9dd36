"""Make lessons/notebooks/NN_name.ipynb from each lesson script (the one source of truth).

    python lessons/make_notebooks.py            # write every notebook, executed, with outputs
    python lessons/make_notebooks.py --check    # exit 1 if a notebook's cells differ from its script

A notebook is its script's cells (jupytext reads the ``# %%`` percent format), after one
setup cell that finds ``lessons/_common.py`` wherever the notebook is opened: from the
repository root, from ``lessons/``, from ``lessons/notebooks/``, or in a fresh Colab or
Jupyter after the install cell in lessons/README.md. It is executed in a fresh kernel
(nbclient), from ``lessons/notebooks/``, so the committed notebook shows its outputs and
figures; the figures the lesson saves go to a temporary folder, not over the committed ones.

tests/test_lessons.py fails when a committed notebook's cells are not its script's (run this
again after editing a lesson) or when one holds an error.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

LESSONS = Path(__file__).resolve().parent
NOTEBOOKS = LESSONS / "notebooks"

SETUP = '''\
# Setup: make lessons/_common.py importable wherever this notebook runs (the repository root,
# lessons/, lessons/notebooks/, or a clone made by the install cell of lessons/README.md).
import os, sys
for _dir in ("lessons", "..", ".", "minigrok/lessons", "../lessons"):
    if os.path.isfile(os.path.join(_dir, "_common.py")):
        sys.path.insert(0, os.path.abspath(_dir))
        break
else:
    raise RuntimeError("lessons/_common.py not found: open this notebook inside a clone of "
                       "minigrok (see lessons/README.md, 'As notebooks')")'''


def notebook_of(script: Path) -> nbformat.NotebookNode:
    """The lesson's notebook, unexecuted: the setup cell, then the script's cells."""
    nb = jupytext.read(script, fmt="py:percent")
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                  "language": "python"},
                   "language_info": {"name": "python"},
                   "jupytext": {"source": f"lessons/{script.name} (made by "
                                          "lessons/make_notebooks.py: edit the script)"}}
    for i, cell in enumerate(nb.cells):
        cell.pop("id", None)
        cell["id"] = f"cell-{i}"
        cell.metadata = {}
    return nb


def sources(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def scripts() -> list[Path]:
    return sorted(LESSONS.glob("[0-9][0-9]_*.py"))


def stale() -> list[str]:
    """The notebooks missing or whose cells differ from their scripts'."""
    bad = []
    for script in scripts():
        path = NOTEBOOKS / script.with_suffix(".ipynb").name
        if not path.is_file() or sources(nbformat.read(path, as_version=4)) != \
                sources(notebook_of(script)):
            bad.append(path.name)
    return bad


def execute(nb, figures: str):
    from nbclient import NotebookClient
    os.environ["MINIGROK_FIGURES"] = figures
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    for cell in nb.cells:
        cell.pop("execution", None)
        cell.metadata.pop("execution", None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that they are up to date")
    p.add_argument("lessons", nargs="*", help="only these scripts (default: all)")
    args = p.parse_args(argv)
    if args.check:
        bad = stale()
        for name in bad:
            print(f"out of date: lessons/notebooks/{name} (run python lessons/make_notebooks.py)")
        return 1 if bad else 0
    NOTEBOOKS.mkdir(exist_ok=True)
    chosen = [Path(s).resolve() for s in args.lessons] or scripts()
    with tempfile.TemporaryDirectory() as figures:
        for script in chosen:
            nb = notebook_of(script)
            execute(nb, figures)
            out = NOTEBOOKS / script.with_suffix(".ipynb").name
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            nbformat.write(nb, tmp)
            os.replace(tmp, out)
            print(f"wrote {out.relative_to(LESSONS.parent)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
