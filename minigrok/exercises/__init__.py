"""Classroom exercises: a student writes one Grok-1 step, minigrok checks it against its own.

    python -m minigrok exercises list
    python -m minigrok exercises check rope                   # lessons/exercises/rope.py
    python -m minigrok exercises check rope --file my_rope.py # a student's own copy
    python -m minigrok exercises check rope --reference       # minigrok's function (passes)

This subpackage grades the stubs in lessons/exercises/ with hypothesis properties (see
grading.py; the exercises themselves are in norms_and_rope, attention, moe, weights and
generation, listed in order by registry.py). Runs are derandomised: the same file always
gets the same feedback.

A student's file (and ``--reference`` on the command line) is checked in a child process
(isolated.py, _child.py) under a time limit for the whole check (``Exercise.timeout``, 60 s,
or ``--timeout SECONDS``) and a 4 GiB address-space limit (RLIMIT_AS): a hang, a crash, an
exit or a fake "PASSED" line fails the check with a one-line reason; only the checker's own
verdict passes it. What the student's code prints goes to stderr. A function passed to
``check`` as ``fn`` (the tests, the lessons) is trusted and runs in this process.

hypothesis is a test/lessons dependency, not a run-time one:
without it importing this package raises MinigrokError, so the rest of minigrok never
imports it. The grader imports only minigrok.errors and minigrok.reference.
"""

from pathlib import Path

from ..errors import MinigrokError
from .grading import MAX_EXAMPLES, Exercise, Failed, Mistake, Property, load_student, run_check
from .isolated import MAX_TIMEOUT, MEMORY_LIMIT, run_isolated
from .registry import EXERCISES

__all__ = ["EXERCISES", "MAX_EXAMPLES", "MAX_TIMEOUT", "MEMORY_LIMIT", "STUBS_DIR", "Exercise",
           "Failed", "Mistake", "Property", "check", "get", "load_student", "names", "stub_path"]

# The stubs ship in the repository beside the package, not inside it.
STUBS_DIR = Path(__file__).resolve().parents[2] / "lessons" / "exercises"


def names() -> list[str]:
    return list(EXERCISES)


def get(name: str) -> Exercise:
    if name not in EXERCISES:
        raise MinigrokError(f"unknown exercise {name!r}; the exercises are: "
                            f"{', '.join(EXERCISES)}")
    return EXERCISES[name]


def stub_path(name: str) -> Path:
    return STUBS_DIR / f"{name}.py"


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
