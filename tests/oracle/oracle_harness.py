"""Test-side harness of the oracle suite: find the official code, start and talk to the worker.

The official Grok-1 code (xai-org/grok-1 at commit 7050ed2) is never committed here. It is
looked for in ``$GROK1_SRC``, else ``~/.cache/minigrok/grok-1``; its virtual environment is
``$MINIGROK_ORACLE_VENV`` (default ``~/.cache/minigrok/oracle-venv``), created on first use by
``setup_venv.sh``. ``Oracle`` keeps one worker process (worker.py, in that venv) alive for
the whole test session and sends it cases, arrays through .npz files in a private folder.
"""

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = Path(os.environ.get("GROK1_SRC", Path.home() / ".cache" / "minigrok" / "grok-1")).expanduser()
VENV = Path(os.environ.get("MINIGROK_ORACLE_VENV",
                           Path.home() / ".cache" / "minigrok" / "oracle-venv")).expanduser()
OFFICIAL_FILES = ("model.py", "runners.py", "checkpoint.py")


def source_missing() -> str | None:
    """None when the official source is here, else the one-line reason the suite is skipped."""
    missing = [f for f in OFFICIAL_FILES if not (SRC / f).is_file()]
    if missing:
        return (f"oracle suite skipped: official source not found at {SRC} (missing "
                f"{', '.join(missing)}; see tests/oracle/README.md)")
    return None


def ensure_venv() -> Path:
    """The oracle venv's python, creating the venv with setup_venv.sh on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        r = subprocess.run(["bash", str(HERE / "setup_venv.sh")], capture_output=True, text=True,
                           env=dict(os.environ, MINIGROK_ORACLE_VENV=str(VENV), GROK1_SRC=str(SRC)))
        if r.returncode or not python.exists():
            raise RuntimeError(f"could not create the oracle venv at {VENV} "
                               f"(tests/oracle/setup_venv.sh):\n{r.stdout}\n{r.stderr}")
    return python


class OracleError(RuntimeError):
    """The official code raised, or the worker died: carries its traceback / log tail."""


class Oracle:
    """One long-lived worker running the official code; ``oracle(op, arrays, **args)``."""

    def __init__(self, timeout: float = 900, fast_compile: bool = False):
        self.python = ensure_venv()
        self.dir = Path(tempfile.mkdtemp(prefix="minigrok-oracle-"))
        self.log_path = self.dir / "worker.log"
        self._log = open(self.log_path, "w")
        self.timeout = timeout
        self.calls = 0
        self.seconds = {}            # op -> total worker seconds
        self.proc = subprocess.Popen(
            [str(self.python), str(HERE / "worker.py"), "--src", str(SRC)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, cwd=str(self.dir),
            env=dict(os.environ, MINIGROK_ORACLE_FAST_COMPILE="1" if fast_compile else "0"))
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        hello = self._reply(120)
        if not hello.get("ready"):
            raise OracleError(f"oracle worker did not start: {hello}")

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise OracleError(f"oracle worker gave no answer in {timeout:.0f} s\n{self.log_tail()}")
        if line is None:
            raise OracleError(f"oracle worker exited ({self.proc.wait()})\n{self.log_tail()}")
        return json.loads(line)

    def log_tail(self, n: int = 4000) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-n:]

    def __call__(self, op: str, arrays: dict | None = None, timeout: float | None = None, **args):
        """Run ``op`` in the worker; returns (outputs {name: np.ndarray}, reply dict)."""
        self.calls += 1
        n = self.calls
        req = {"op": op, **args}
        if arrays is not None:
            req["inputs"] = str(self.dir / f"in-{n}.npz")
            np.savez(req["inputs"], **{k: np.asarray(v) for k, v in arrays.items()})
        req["outputs"] = str(self.dir / f"out-{n}.npz")
        t0 = time.perf_counter()
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self._reply(timeout or self.timeout)
        self.seconds[op] = self.seconds.get(op, 0.0) + time.perf_counter() - t0
        for key in ("inputs",):
            if key in req:
                Path(req[key]).unlink(missing_ok=True)
        if not reply.get("ok"):
            raise OracleError(f"official code failed on {op}:\n{reply.get('error')}")
        out = {}
        path = Path(req["outputs"])
        if path.exists():
            with np.load(path) as z:
                out = {k: z[k] for k in z.files}
            path.unlink()
        return out, reply

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
