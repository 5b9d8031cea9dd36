"""Classroom exercises: a student writes one Grok-1 step, minigrok checks it against its own.

    python -m minigrok exercises list
    python -m minigrok exercises check rope                   # lessons/exercises/rope.py
    python -m minigrok exercises check rope --file my_rope.py # a student's own copy
    python -m minigrok exercises check rope --reference       # minigrok's function (passes)

This subpackage grades the stubs in lessons/exercises/ with hypothesis properties (see
grading.py; the exercises themselves are in norms_and_rope, attention, moe, weights and
generation, listed in order by registry.py). Runs are derandomised: the same file always
gets the same feedback. hypothesis is a test/lessons dependency, not a run-time one:
without it importing this package raises MinigrokError, so the rest of minigrok never
imports it. The grader imports only minigrok.errors and minigrok.reference.
"""

from pathlib import Path

from ..errors import MinigrokError
from .grading import MAX_EXAMPLES, Exercise, Failed, Mistake, Property, load_student, run_check
from .registry import EXERCISES

__all__ = ["EXERCISES", "MAX_EXAMPLES", "STUBS_DIR", "Exercise", "Failed", "Mistake", "Property",
           "check", "get", "load_student", "names", "stub_path"]

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


def check(name: str, fn=None, *, path=None, write=print) -> bool:
    """Check the student's function (or ``fn``) for exercise ``name``; print the feedback.

    Returns True when every property holds. ``path`` is the student's file (for messages
    and to load ``fn`` from when ``fn`` is None).
    """
    ex = get(name)
    return run_check(ex, fn, path=path, stub=stub_path(ex.name), write=write)
