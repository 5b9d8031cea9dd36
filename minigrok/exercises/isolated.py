"""Checking a student's file in a child process, with a time and a memory limit.

A student's file is code we did not write: an endless loop, ``time.sleep``, ``sys.exit(0)``,
``os._exit(0)``, a segfault or a 100 GB array must not hang the checker or end it with exit
code 0. So the check runs in a child (``python -m minigrok.exercises._child``, see there for
its limits) in a session of its own, and the parent only relays: the child's report lines go
to ``write`` as they come, whatever the student's code prints goes to stderr (at most
OUTPUT_SHOWN bytes), and the check passes only when the child sends the checker's explicit
pass verdict and then exits with status 0. Anything else (no verdict by the time limit, a
signal, an exit, a garbled report) is a failure with a one-line reason, and the child's whole
process group is killed before this returns.

This guards against accidents and naive tricks (a fake "PASSED" line, a forged verdict
written to the report pipe: the verdict must carry a token the student's code is not given),
not a determined cheat: the student's code shares the child's process with the checker and
could dig the token out of the interpreter's frames.
"""

import codecs
import json
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import MinigrokError
from .grading import Exercise, again_command, header

MEMORY_LIMIT = 4 << 30        # bytes of address space (RLIMIT_AS) for the child: 4 GiB
OUTPUT_SHOWN = 64 << 10       # bytes of the student's own output echoed, then a note
MAX_REPORT_LINE = 1 << 20     # a longer "line" on the report pipe is not the checker's
MAX_TIMEOUT = 86400.0         # seconds: a day; select() and time_t overflow not far above

# Where the minigrok package lives, first on the child's path: the child must import this
# minigrok, not one that happens to sit in the student's working directory.
_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from minigrok.exercises._child import main; main()")


def _child_env() -> dict:
    # One thread per numpy library: the arrays are tiny, and a BLAS that starts a thread per
    # core reserves address space the 4 GiB limit would then lack on a large machine.
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
                OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _exited(proc) -> bool:
    """Whether the child has ended, without reaping it: until it is reaped its pid (the
    number of its process group) cannot be reused, so killing that group stays safe."""
    if hasattr(os, "waitid"):
        try:
            return os.waitid(os.P_PID, proc.pid,
                             os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True
    return proc.poll() is not None


def _end(proc):
    """Kill the child's process group (anything the student's code started too) and reap."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):          # all gone already
        pass
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


class _Relay:
    """The child's two pipes: report lines to ``write``, the student's output to ``echo``."""

    def __init__(self, write, echo, token: str):
        self.write, self.echo, self.token = write, echo, token
        self.pending, self.shown, self.lines = b"", 0, 0
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")   # split characters
        self.verdict, self.garbled = None, False

    def report(self, data: bytes):
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for raw in lines:
            try:
                message = json.loads(raw)
            except ValueError:
                message = None
            if self.verdict is not None or not isinstance(message, dict):
                self.garbled = True                # something after the verdict, or not JSON
            elif "line" in message:
                self.write(str(message["line"]))
                self.lines += 1
            elif message.get("token") == self.token:
                self.verdict = message
            else:
                self.garbled = True                # a verdict the checker did not send
        self.garbled |= len(self.pending) > MAX_REPORT_LINE

    def output(self, data: bytes):
        if self.shown < OUTPUT_SHOWN:
            self.echo(self.decoder.decode(data[:OUTPUT_SHOWN - self.shown]))
            if self.shown + len(data) >= OUTPUT_SHOWN:
                self.echo("\n[minigrok: the rest of your code's output is not shown]\n")
        self.shown += len(data)


def _follow(proc, relay: _Relay, deadline: float) -> bool:
    """Relay until the child has ended and its pipes are drained (True), the deadline comes
    first (False) or the report is garbled (True at once: there is no use waiting)."""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, relay.report)
        sel.register(proc.stderr, selectors.EVENT_READ, relay.output)
        while not relay.garbled:
            done = _exited(proc)
            left = deadline - time.monotonic()
            if left <= 0:
                return done
            # Once it has ended, read what is left without waiting: a process the student's
            # code started may hold the pipes open for ever.
            events = sel.select(0 if done else min(left, 0.5)) if sel.get_map() else []
            if not sel.get_map() and not done:
                time.sleep(min(left, 0.05))
            for key, _ in events:
                data = os.read(key.fd, 1 << 16)
                if data:
                    key.data(data)
                else:
                    sel.unregister(key.fileobj)
            if done and not events:
                return True
    return True


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    why = {"SIGKILL": "out of memory?", "SIGXCPU": "CPU time limit"}.get(name)
    if why is None:
        why = signal.strsignal(number) if hasattr(signal, "strsignal") else None
    return f"{name}: {why}" if why else name


def run_isolated(ex: Exercise, *, path=None, reference: bool = False, stub: Path | None = None,
                 timeout: float | None = None, write=print, echo=None) -> bool:
    """Check the student's file at ``path`` (or, with ``reference``, minigrok's function) for
    ``ex`` in a child process; write the feedback. True only on the checker's explicit pass.

    ``timeout`` (seconds, default ``ex.timeout``) bounds the whole check; ``echo`` gets what
    the student's code prints (default: this process's stderr).
    """
    return check_isolated(ex, path=path, reference=reference, stub=stub, timeout=timeout,
                          write=write, echo=echo)[0]


def check_isolated(ex: Exercise, *, path=None, reference: bool = False,
                   stub: Path | None = None, timeout: float | None = None, write=print,
                   echo=None) -> tuple[bool, str | None]:
    """``run_isolated``, and why it failed: (True, None) on a pass; (False, reason) when the
    check did not finish (the one-line reason: a time out, a crash, an exit, a garbled
    report); (False, None) when the checker's own report, written in full, says why."""
    if not reference and (path is None or not Path(path).is_file()):
        raise MinigrokError(f"{path}: no such file")
    timeout = ex.timeout if timeout is None else timeout
    if not 0 < timeout <= MAX_TIMEOUT:                     # NaN too
        raise MinigrokError(f"the time limit must be more than 0 and at most {MAX_TIMEOUT:g} "
                            f"seconds, got {timeout:g}")
    if echo is None:
        def echo(text):
            sys.stderr.write(text)
            sys.stderr.flush()
    shown = None if reference else path
    for line in header(ex, shown):
        write(line)
    spec = {"name": ex.name, "path": None if reference else str(path), "reference": reference,
            "stub": str(stub) if stub is not None else None, "timeout": timeout,
            "memory": MEMORY_LIMIT}
    # The verdict must carry this token, which the child reads from its stdin before the
    # student's file is imported: a line written blindly to the report pipe cannot pass.
    token = secrets.token_hex(16)
    relay = _Relay(write, echo, token)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", _BOOT, _ROOT, json.dumps(spec)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_child_env(), start_new_session=hasattr(os, "setsid"))
    try:
        try:
            proc.stdin.write(f"{token}\n".encode())
            proc.stdin.flush()
        except OSError:                           # it died at once: no verdict, a failure
            pass
        ended = _follow(proc, relay, start + timeout)
    finally:
        _end(proc)                                # also on Ctrl-C or an error of our own
    code = proc.returncode
    if relay.garbled:
        reason = ("the checker's report came back garbled: does your code write to file "
                  "descriptors it did not open?")
    elif not ended:
        reason = (f"timed out after {timeout:g} s: the check did not finish (an endless loop "
                  f"or a long sleep in your code? --timeout sets the limit)")
    elif code < 0:
        reason = f"your code crashed the check ({_signal_name(-code)}) before it finished"
    elif relay.verdict is None or code != 0:
        reason = (f"your code exited (exit status {code}: os._exit({code}) or similar) "
                  f"before the check finished")
    elif relay.verdict.get("verdict") == "pass":
        return True, None
    elif not relay.verdict.get("reason"):
        return False, None                                  # the report said why, in full
    else:
        reason = str(relay.verdict["reason"])
    if relay.lines:
        write("")
    write(f"  {reason}")
    write("")
    write(f"FAILED: fix this, then run again: {again_command(ex, shown, stub)}")
    return False, reason
