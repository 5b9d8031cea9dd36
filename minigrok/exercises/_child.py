"""The child process that checks a student's file (isolated.py starts it, one per check).

    (echo TOKEN; sleep 60) | python -m minigrok.exercises._child '{"name": "rope", ...}'

(by hand, to debug it: the child ends itself when its stdin closes, the parent's death).

The student's code runs here, never in the parent: whatever it does (loop for ever, exit,
crash, print "PASSED") the parent only counts the verdict this module sends, and ends this
process group when the time is up. The report lines and the verdict travel as JSON lines on a
private duplicate of the original stdout; fd 1 is then pointed at fd 2, so nothing the
student prints (from Python or from C) can pass for the checker's report. The parent echoes
that output to its stderr.

The limits set here, before the student's file is imported (so it cannot lift them):
RLIMIT_AS (address space, MEMORY_LIMIT in isolated.py: 4 GiB), RLIMIT_CORE 0 (a segfault
leaves no core file) and RLIMIT_CPU (the time limit plus 30 s, a backstop: the parent's wall
clock is the real limit). A watchdog thread ends the group when the parent goes away.
"""

import json
import os
import select
import signal
import sys
import threading
from pathlib import Path

from .grading import run_check
from .registry import EXERCISES

GRACE = 10.0                 # seconds after the parent's deadline before the watchdog acts


def _limit(memory: int, timeout: float):
    try:
        import resource
    except ImportError:                                   # not POSIX: no limits to set
        return
    cpu = int(timeout) + 30
    for what, soft, hard in ((resource.RLIMIT_AS, memory, memory),
                             (resource.RLIMIT_CORE, 0, 0),
                             (resource.RLIMIT_CPU, cpu, cpu + 5)):
        # Never above the limits this process was started with (a test harness's, say);
        # the hard limit too is lowered, so the student's code cannot raise the soft one.
        _, old_hard = resource.getrlimit(what)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(what, (soft, hard))


def _watch(fd: int, seconds: float):
    """End this process group when the parent's end of ``fd`` closes (the parent died without
    cleaning up) or, as a backstop, ``seconds`` after the start."""
    select.select([fd], [], [], seconds)
    if hasattr(os, "killpg") and os.getpgrp() == os.getpid():   # our own group, not a shell's
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(70)


def _exit_call(code) -> str:
    return "sys.exit()" if code is None else f"sys.exit({code!r})"


def _check(spec: dict, send) -> dict:
    """Run the check; the verdict to send back (a reason when the report is not complete)."""
    ex = EXERCISES[spec["name"]]
    fn = ex.reference if spec.get("reference") else None
    stub = Path(spec["stub"]) if spec.get("stub") else None
    try:
        ok = run_check(ex, fn, path=spec.get("path"), stub=stub, show_header=False,
                       write=lambda line: send(line=line))
    except SystemExit as e:                   # at import or in a call: not caught by the grader
        return {"verdict": "fail", "reason": f"your code exited ({_exit_call(e.code)}) before "
                "the check finished"}
    except MemoryError:
        return {"verdict": "fail", "reason": f"the check ran out of memory (it may use "
                f"{spec['memory'] / 2**30:g} GiB of address space)"}
    except BaseException as e:                # KeyboardInterrupt, GeneratorExit, an odd result
        text = str(e).splitlines()[0][:200] if str(e) else ""
        return {"verdict": "fail", "reason": f"the check stopped on {type(e).__name__}"
                + (f": {text}" if text else "") + " (raised by or because of your code)"}
    return {"verdict": "pass" if ok else "fail"}


def _read_token(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        more = os.read(fd, 64)
        if not more:
            break
        data += more
    return data.decode("ascii", "replace").strip()


def main(argv=None):
    spec = json.loads((sys.argv[1:] if argv is None else argv)[0])
    token = _read_token(0)                    # the first line on stdin; the verdict carries it
    report = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    # Past the token the parent writes nothing to our stdin: it is there to close when the
    # parent goes.
    # The student's code reads /dev/null instead (input() fails at once, it does not hang).
    watched = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    threading.Thread(target=_watch, args=(watched, spec["timeout"] + GRACE), daemon=True).start()
    _limit(spec["memory"], spec["timeout"])

    def send(**message):
        report.write(json.dumps(message) + "\n")
        report.flush()

    send(token=token, **_check(spec, send))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:                      # the student may have closed or replaced it
            pass
    # Not sys.exit: no atexit handler or thread the student left behind can delay or
    # change the end.
    os._exit(0)


if __name__ == "__main__":
    main()
