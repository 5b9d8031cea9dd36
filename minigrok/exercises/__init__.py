"""Classroom exercises: a student writes one Grok-1 step, minigrok checks it against its own.

    python -m minigrok exercises list
    python -m minigrok exercises check rope                   # lessons/exercises/rope.py
    python -m minigrok exercises check rope --file my_rope.py # a student's own copy
    python -m minigrok exercises check rope --reference       # minigrok's function (passes)
    python -m minigrok exercises init DIR                     # the stubs, into DIR
    python -m minigrok exercises check --all --dir DIR --json # every exercise, DIR/NAME.py

This subpackage grades the stubs in lessons/exercises/ with hypothesis properties (see
grading.py; the exercises themselves are in tokens, checkpoint_files, norms_and_rope,
attention, moe, model, weights and generation, listed in order by registry.py). Runs are derandomised: the same file always
gets the same feedback.

The stubs ship twice: ``stubs/NAME.py`` inside this package (package data, what ``init``
copies, so a pip-installed minigrok has them) and ``lessons/exercises/NAME.py`` in the
repository (the students' working copies, what ``check NAME`` reads by default). The two
folders hold identical files, one per exercise (tests/test_exercises_class.py checks it).

A student's file (and ``--reference`` on the command line) is checked in a child process
(isolated.py, _child.py) under a time limit for the whole check (``Exercise.timeout``, 60 s,
or ``--timeout SECONDS``) and a 4 GiB address-space limit (RLIMIT_AS): a hang, a crash, an
exit or a fake "PASSED" line fails the check with a one-line reason; only the checker's own
verdict passes it. What the student's code prints goes to stderr. A function passed to
``check`` as ``fn`` (the tests, the lessons) is trusted and runs in this process.
``check_all`` grades a whole folder that way, one child process per exercise, and returns one
``{"name", "passed", "message", "seconds"}`` record each (``check --all --json``).

hypothesis is a test/lessons dependency, not a run-time one:
without it importing this package raises MinigrokError, so the rest of minigrok never
imports it. The grader imports only minigrok.errors and minigrok.reference.
"""

import os
import tempfile
import time
from pathlib import Path

from ..errors import MinigrokError
from .grading import (MAX_EXAMPLES, Exercise, Failed, Mistake, Property, header, load_student,
                      run_check, summary)
from .isolated import MAX_TIMEOUT, MEMORY_LIMIT, check_isolated, run_isolated
from .registry import EXERCISES

__all__ = ["EXERCISES", "MAX_EXAMPLES", "MAX_TIMEOUT", "MEMORY_LIMIT", "SHIPPED_DIR",
           "STUBS_DIR", "Exercise", "Failed", "Mistake", "Property", "check", "check_all",
           "get", "init", "load_student", "names", "shipped_stub", "stub_path"]

# The students' working copies: in the repository beside the package (absent after a pip
# install; ``init`` copies the shipped ones into a folder of the student's choosing).
STUBS_DIR = Path(__file__).resolve().parents[2] / "lessons" / "exercises"
# The same files inside the package (package data): what ``init`` copies.
SHIPPED_DIR = Path(__file__).resolve().parent / "stubs"


def names() -> list[str]:
    return list(EXERCISES)


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise MinigrokError(f"unknown exercise {name!r}; the exercises are: "
                            f"{', '.join(EXERCISES)}")
    return EXERCISES[name]


def stub_path(name: str) -> Path:
    """The working copy of ``name``'s stub in the repository (lessons/exercises/NAME.py)."""
    return STUBS_DIR / f"{name}.py"


def shipped_stub(name: str) -> Path:
    """The copy of ``name``'s stub inside the package (what ``init`` copies)."""
    return SHIPPED_DIR / f"{name}.py"


def check(name: str, fn=None, *, path=None, reference: bool = False, timeout=None,
          write=print) -> bool:
    """Check exercise ``name``; print the feedback. True only when every property holds.

    ``fn`` given: that function, in this process (trusted code: no time limit). Otherwise
    the student's file at ``path`` (default: the stub), or with ``reference`` minigrok's
    own function, in a child process limited to ``timeout`` seconds (default: the
    exercise's) and MEMORY_LIMIT bytes.
    """
    ex = get(name)
    if fn is not None:
        return run_check(ex, fn, path=path, stub=stub_path(ex.name), write=write)
    if path is None and not reference:
        path = stub_path(ex.name)
    return run_isolated(ex, path=path, reference=reference, stub=stub_path(ex.name),
                        timeout=timeout, write=write)


def check_all(folder=None, *, reference: bool = False, timeout=None, only=None,
              report=None, echo=None) -> list[dict]:
    """Grade every exercise (or those named in ``only``), in teaching order, each in a child
    process of its own under its time limit (``timeout`` seconds, default the exercise's).

    The student's files are ``folder``/NAME.py (default: lessons/exercises/); with
    ``reference``, minigrok's own functions. A missing file is a failed exercise. Returns one
    ``{"name", "passed", "message", "seconds"}`` per exercise (``message``: the one-line
    verdict, or why it failed); ``report`` is called with each as it is done. ``echo`` gets
    what the student's code prints (default: this process's stderr).
    """
    folder = STUBS_DIR if folder is None else Path(folder)
    if not reference and not folder.is_dir():
        raise MinigrokError(f"{folder}: no such folder")
    results = []
    for name in names() if only is None else [get(n).name for n in only]:
        ex = get(name)
        path = None if reference else folder / f"{name}.py"
        start = time.monotonic()
        if path is not None and not path.is_file():
            passed, message = False, f"missing file {path}"
        else:
            lines = []
            passed, reason = check_isolated(ex, path=path, reference=reference,
                                            stub=stub_path(name), timeout=timeout,
                                            write=lines.append, echo=echo)
            message = reason or summary(lines[len(header(ex, path)):])
            message = message.splitlines()[0] if message.strip() else "failed"
        result = {"name": name, "passed": bool(passed), "message": message,
                  "seconds": round(time.monotonic() - start, 2)}
        results.append(result)
        if report is not None:
            report(result)
    return results


def init(folder, *, force: bool = False) -> list[Path]:
    """Copy every exercise's stub into ``folder`` (made if missing); the paths written.

    A stub already there (``folder``/NAME.py for an exercise NAME: it may hold a student's
    work) is an error naming it, before anything is written, unless ``force``; ``force``
    replaces those files only, nothing else in the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MinigrokError(f"{folder} exists and is not a folder")
    missing = [name for name in names() if not shipped_stub(name).is_file()]
    if missing:
        raise MinigrokError(f"this installation of minigrok lacks the stub of "
                            f"{', '.join(missing)} (no {shipped_stub(missing[0])}): reinstall it")
    targets = [(shipped_stub(name), folder / f"{name}.py") for name in names()]
    for _, target in targets:
        if target.is_dir() or (target.exists() or target.is_symlink()) and not force:
            what = "is a folder" if target.is_dir() else "exists (it may hold your work)"
            raise MinigrokError(f"{target} {what}: nothing written"
                                + ("" if target.is_dir() else "; --force replaces the stubs"))
    folder.mkdir(parents=True, exist_ok=True)
    for source, target in targets:
        # Written beside it, then renamed over it: a symlink there is replaced, not followed.
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(source.read_bytes())
            os.chmod(temp, 0o644)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    return [target for _, target in targets]
