"""The grader: exercise types, how results are shown, the check loop and the hints.

An Exercise names the student's function, minigrok's own (``reference``), hypothesis
strategies for its inputs and the Properties it must satisfy, in teaching order. ``check``
runs them one at a time (shapes first, the exercise's own properties, last "agrees with
minigrok") and stops at the first that fails: it prints the smallest failing input
hypothesis found and, when the student's output equals a known Mistake's on that input, the
hint naming it. The helpers here (``call``, ``close``, ``fmt_array``...) are what the
exercise modules build their properties from.
"""

import dataclasses
import importlib.util
import os
import reprlib
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import MinigrokError

try:
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import errors as hypothesis_errors
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:
    raise MinigrokError("the exercise checker needs hypothesis: pip install hypothesis") from None

MAX_EXAMPLES = 40          # per property; every example is a handful of tiny numpy calls


class Failed(Exception):
    """A property that does not hold: ``lines`` explain it, ``case`` is the input."""

    def __init__(self, lines, case=None, got=None):
        super().__init__(lines[0] if lines else "failed")
        self.lines, self.case, self.got = list(lines), case, got


@dataclasses.dataclass(frozen=True)
class Property:
    text: str                                  # what must hold, in a student's words
    check: Callable                            # (exercise, fn, case) -> None, raises Failed


@dataclasses.dataclass(frozen=True)
class Mistake:
    hint: str
    fn: Callable                               # a wrong version, with the student's signature


@dataclasses.dataclass(frozen=True)
class Exercise:
    name: str                                  # stub lessons/exercises/<name>.py (+ stubs/)
    function: str                              # the function the student writes
    args: tuple                                # its positional parameters, in order
    outputs: tuple                             # names of its results (one, or a tuple)
    title: str
    lesson: str                                # the lesson that teaches it
    solution: str                              # where minigrok's own version lives
    reference: Callable                        # minigrok's function, the student's signature
    cases: Callable                            # (st, hnp) -> strategy of case dicts
    example: Callable                          # () -> a fixed first case
    shapes: Callable                           # case -> expected shape of each output
    properties: tuple = ()
    mistakes: tuple = ()
    rtol: float = 1e-4
    atol: float = 1e-5
    compare: Callable | None = None            # (exercise, got, want, case) -> None or Failed
    run: Callable | None = None                # (exercise, fn, case) -> arrays to diagnose by
    timeout: float = 60.0                      # seconds for a whole check of a student's file


# ----------------------------------------------------------------------------- helpers

def floats(st, bound: float):
    return st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False,
                     allow_subnormal=False)


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def fmt_array(a) -> str:
    """Small arrays on one line as nested lists (rounded); larger ones as numpy prints them."""
    a = np.asarray(a)
    if a.size <= 48:
        if a.dtype.kind == "f":
            return str(np.round(a.astype(np.float64), 4).tolist())
        return str(a.tolist())
    return np.array2string(a, precision=4, suppress_small=True, max_line_width=88, threshold=60)


def _fmt_value(v) -> str:
    if isinstance(v, np.ndarray) and v.size > 48:
        first = fmt_array(v.reshape(-1)[:6])[:-1]
        return f"{v.dtype} array of shape {fmt_shape(v.shape)}, starting {first}, ...]"
    if isinstance(v, np.ndarray):
        return f"{fmt_array(v)}   (shape {fmt_shape(v.shape)}, {v.dtype})"
    return repr(v)


def indent(text: str, pad: str) -> str:
    return "\n".join(pad + line for line in text.splitlines())


def arguments(ex: Exercise, case: dict) -> list:
    """The function's arguments from ``case``, arrays copied (a function may write into them)."""
    return [np.array(case[a], copy=True) if isinstance(case[a], np.ndarray) else case[a]
            for a in ex.args]


def call(ex: Exercise, fn, case: dict, args=None):
    """The student's results for ``case`` (called with ``args``, else copies of the case's
    arrays), as a list of arrays (one per output)."""
    args = arguments(ex, case) if args is None else args
    try:
        out = fn(*args)
    except NotImplementedError:
        raise Failed([f"{ex.function}() raised NotImplementedError"], case) from None
    except Exception as e:                                   # the student's bug, reported
        raise Failed([f"your {ex.function}() raised {type(e).__name__}: {e}{_where(e)}"],
                     case) from None
    return results(ex, out, case)


def _where(e: Exception) -> str:
    """' (at file.py line N: code)' for the innermost frame outside minigrok and numpy."""
    ours = Path(__file__).resolve().parents[1]                # the minigrok package
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        path = Path(frame.filename)
        if ours in path.parents or "site-packages" in path.parts or "numpy" in path.parts:
            continue
        return f" (at {path.name} line {frame.lineno}: {(frame.line or '').strip()})"
    return ""


def results(ex: Exercise, out, case):
    if out is None:
        raise Failed([f"your {ex.function}() returned None: did you forget `return`?"], case)
    if len(ex.outputs) == 1:
        out = (out,)
    elif not isinstance(out, (tuple, list)) or len(out) != len(ex.outputs):
        raise Failed([f"{ex.function}() must return {len(ex.outputs)} results "
                      f"({', '.join(ex.outputs)}), got {type(out).__name__}"], case)
    try:
        arrays = [np.asarray(o) for o in out]
    except Exception as e:
        raise Failed([f"{ex.function}() returned something that is not an array ({e})"], case)
    # A str or an object array would pass the shape check (a str has shape []) and then
    # break the comparison with minigrok's numbers: say what it is instead.
    for name, o, a in zip(ex.outputs, out, arrays):
        if a.dtype.kind not in "biufc":
            what = reprlib.repr(o) if len(ex.outputs) == 1 else f"{reprlib.repr(o)} for {name}"
            raise Failed([f"your {ex.function}() returned a {type(o).__name__} ({what}), not "
                          f"an array of numbers"], case)
    return arrays


def close(name: str, got, want, rtol: float, atol: float, case, hint_lines=()):
    """Failed with expected / got / max error unless got ~= want (same shape)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise Failed([f"{name}: expected shape {fmt_shape(want.shape)}, got "
                      f"{fmt_shape(got.shape)}"], case)
    if got.dtype == bool or want.dtype == bool or np.issubdtype(want.dtype, np.integer):
        ok = np.array_equal(got, want)
        err = None
    else:
        g, w = got.astype(np.float64), want.astype(np.float64)
        ok = bool(np.all(np.isclose(g, w, rtol=rtol, atol=atol)))
        err = np.abs(g - w)
    if ok:
        return
    lines = [f"{name}: your values differ from minigrok's",
             "expected: " + fmt_array(want), "got:      " + fmt_array(got)]
    if err is not None:
        if np.isnan(got.astype(np.float64)).any():
            lines.append("your result contains NaN")
        else:
            where = np.unravel_index(int(np.nanargmax(err)), err.shape) if err.size else ()
            lines.append(f"max abs error {np.nanmax(err):.4g} at index {tuple(int(i) for i in where)}")
    lines += list(hint_lines)
    raise Failed(lines, case)


def _shape_property(ex: Exercise) -> Property:
    names = ", ".join(ex.outputs)

    def check(ex, fn, case):
        got = call(ex, fn, case)
        for name, g, want in zip(ex.outputs, got, ex.shapes(case)):
            if tuple(g.shape) != tuple(want):
                raise Failed([f"{name}: expected shape {fmt_shape(want)}, got "
                              f"{fmt_shape(g.shape)}"], case, got)
    return Property(f"returns {names} with the documented shape", check)


def _agreement_property(ex: Exercise) -> Property:
    def check(ex, fn, case):
        got = call(ex, fn, case)
        want = results(ex, ex.reference(*arguments(ex, case)), case)
        try:
            if ex.compare is not None:
                ex.compare(ex, got, want, case)
            else:
                for name, g, w in zip(ex.outputs, got, want):
                    close(name, g, w, ex.rtol, ex.atol, case)
        except Failed as f:
            raise Failed(f.lines, case, got) from None
    return Property(f"agrees with minigrok ({ex.solution})", check)


def _same_as(ex: Exercise, got, other) -> bool:
    if len(got) != len(other):
        return False
    for g, o in zip(got, other):
        g, o = np.asarray(g), np.asarray(o)
        if g.shape != o.shape:
            return False
        if g.dtype.kind in "fc" or o.dtype.kind in "fc":
            if not np.allclose(g.astype(np.float64), o.astype(np.float64), rtol=ex.rtol,
                               atol=ex.atol, equal_nan=True):
                return False
        elif not np.array_equal(g, o):
            return False
    return True


def _matching(ex: Exercise, fn, mistakes, case) -> list:
    """The mistakes whose output equals the student's on ``case`` (and differs from minigrok's)."""
    run = ex.run or (lambda ex, f, case: call(ex, f, case))
    try:
        with np.errstate(all="ignore"):
            got = run(ex, fn, case)
            want = run(ex, ex.reference, case)
    except Failed:
        return []
    found = []
    for m in mistakes:
        try:
            with np.errstate(all="ignore"):
                wrong = run(ex, m.fn, case)
        except Exception:
            continue
        if _same_as(ex, got, wrong) and not _same_as(ex, wrong, want):
            found.append(m)
    return found


def _diagnose(ex: Exercise, fn, case) -> list[str]:
    """Hints for the known mistakes whose output equals the student's on ``case``.

    A shrunk case is so small that different mistakes can give the same numbers there (a
    GELU on x @ v and a GELU on the product agree when x @ w = 1); then the fixed example,
    where they differ, decides between them.
    """
    if case is None:
        return []
    found = _matching(ex, fn, ex.mistakes, case)
    if len(found) > 1:
        found = _matching(ex, fn, found, ex.example()) or found
    return [m.hint for m in found]


def softmax64(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------------ running a check

def _shown(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:                                  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def load_student(ex: Exercise, path) -> Callable:
    """The student's function from the file at ``path`` (imported by path, never installed).

    A missing file is a usage error (MinigrokError); a file that does not import or lacks
    the function is a failed check (``Failed``).
    """
    path = Path(path)
    if not path.is_file():
        raise MinigrokError(f"{path}: no such file")
    spec = importlib.util.spec_from_file_location(f"minigrok_exercise_{ex.name}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise Failed([f"{_shown(path)} does not import: {type(e).__name__}: {e}"]) from None
    fn = getattr(module, ex.function, None)
    if not callable(fn):
        raise Failed([f"{_shown(path)} has no function {ex.function}(): keep the name and "
                      f"signature of the stub"])
    return fn


def _settings():
    return settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                    report_multiple_bugs=False, verbosity=Verbosity.quiet,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])


def _run_property(ex: Exercise, prop: Property, fn, strategy):
    """None if ``prop`` holds on every generated case, else the (shrunk) Failed."""
    @_settings()
    @given(strategy)
    def test(case):
        with np.errstate(all="ignore"):
            prop.check(ex, fn, case)

    flaky = tuple(getattr(hypothesis_errors, n) for n in ("Flaky", "FlakyFailure")
                  if hasattr(hypothesis_errors, n))
    try:
        test()
    except Failed as f:
        return f
    except flaky:
        return Failed(["your function gave different answers for the same input: does it keep "
                       "state between calls, or change its input arrays?"])
    return None


def _source(ex: Exercise, path) -> str:
    return _shown(Path(path)) if path is not None else f"minigrok ({ex.solution})"


def header(ex: Exercise, path) -> list[str]:
    """The lines a check starts with (``path`` None: minigrok's own function)."""
    return [f"exercise {ex.name}: {ex.title}", f"checking {ex.function}() from "
            f"{_source(ex, path)}", ""]


def again_command(ex: Exercise, path, stub: Path | None) -> str:
    """The command that checks ``path`` again (no --file for the stub itself)."""
    again = f"python -m minigrok exercises check {ex.name}"
    if path is not None and (stub is None or Path(path).resolve() != stub.resolve()):
        again += f" --file {_source(ex, path)}"
    return again


def run_check(ex: Exercise, fn=None, *, path=None, stub: Path | None = None, write=print,
              show_header: bool = True) -> bool:
    """Check the student's function (or ``fn``) for ``ex``; print the feedback.

    Returns True when every property holds. ``path`` is the student's file (for messages
    and to load ``fn`` from when ``fn`` is None); ``stub`` is the exercise's stub, where
    the "run again" line needs no --file. This runs ``fn`` in this process, with no time
    limit: isolated.py runs a student's file in a child process that calls this with
    ``show_header=False`` (the parent writes the header, so it is there whatever the
    child does).
    """
    if fn is None and not Path(path).is_file():
        raise MinigrokError(f"{path}: no such file")
    source = _source(ex, path)
    again = again_command(ex, path, stub)
    if show_header:
        for line in header(ex, path):
            write(line)
    try:
        if fn is None:
            fn = load_student(ex, path)
        first = ex.example()
        try:
            with np.errstate(all="ignore"):
                call(ex, fn, first)
        except Failed as f:
            if f.lines[0].endswith("raised NotImplementedError"):
                write(f"not implemented yet: open {source} and fill in {ex.function}()")
                write(f"(lesson lessons/{ex.lesson} explains the step)")
                return False
            raise Failed(f.lines, first) from None
    except Failed as f:
        _report(ex, None, f, write, again, first_example=True)
        return False

    strategy = ex.cases(st, hnp)
    props = [_shape_property(ex), *ex.properties, _agreement_property(ex)]
    for prop in props:
        failure = _run_property(ex, prop, fn, strategy)
        if failure is None:
            write(f"  ok    {prop.text}")
            continue
        write(f"  FAIL  {prop.text}")
        _report(ex, fn, failure, write, again)
        return False
    write("")
    write(f"PASSED: all {len(props)} checks hold for {ex.function}() "
          f"({MAX_EXAMPLES} generated examples each)")
    return True


def _report(ex: Exercise, fn, failure: Failed, write, again: str, first_example: bool = False):
    if not first_example:
        write("")
    for line in failure.lines:
        if line:
            write(indent(line, "  "))
    case = failure.case
    if case is not None:
        write("")
        write("  on the first, fixed example:" if first_example else
              "  smallest failing input found:")
        for a in ex.args:
            write(indent(f"{a} = {_fmt_value(case[a])}", "    "))
        extra = {k[1:]: v for k, v in case.items() if k.startswith("_")}
        if extra:
            write("  and, used by the check around your function:")
            for k, v in extra.items():
                write(indent(f"{k} = {_fmt_value(v)}", "    "))
    if fn is not None:
        for hint in _diagnose(ex, fn, case)[:1]:         # the first match: one thing to fix
            write("")
            write(f"  hint: {hint}")
    write("")
    write(f"FAILED: fix this, then run again: {again}")


MAX_SUMMARY = 240             # characters of a one-line summary (check --all's message)


def summary(lines) -> str:
    """One line for a report ``run_check`` wrote in full (after the header): the verdict of a
    pass, "not implemented yet: ...", the first failing property and the first line of why
    ("agrees with minigrok (...): out: your values differ from minigrok's"), or the first line
    of a failure on the first, fixed example ("your f() raised ValueError: ...")."""
    lines = [str(line) for line in lines]
    text = None
    for i, line in enumerate(lines):
        if line.startswith("PASSED: "):
            text = line[len("PASSED: "):]
        elif line.startswith("not implemented yet"):
            text = line
        elif line.startswith("  FAIL  "):
            why = next((rest.strip() for rest in lines[i + 1:]
                        if rest.strip() and not rest.startswith("FAILED: ")), "")
            text = line[len("  FAIL  "):] + (f": {why}" if why else "")
        else:
            continue
        break
    if text is None:
        text = next((line.strip() for line in lines if line.strip()
                     and not line.startswith(("FAILED: ", "  ok    "))), "failed")
    text = text.strip().splitlines()[0] if text.strip() else "failed"
    return text if len(text) <= MAX_SUMMARY else text[:MAX_SUMMARY - 3] + "..."
