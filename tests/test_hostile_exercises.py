"""Nothing hangs, nothing fools the grader: ``exercises check --file`` on hostile student files.

The student's code runs in a child process (minigrok/exercises/isolated.py) under a time limit
and a 4 GiB address-space limit. An endless loop, a sleep, sys.exit / os._exit, a segfault, a
100 GB array, an odd return value or a fake "PASSED" line must each end the whole command
line quickly with exit code 1 (a failed check), the reason on one line of the report, no
traceback, and no process left behind; a correct solution still passes and the stub still
fails. The command lines run in parallel (a fixture starts them all at once), each under an
address-space limit of its own and a wall-clock timeout.
"""

import dataclasses
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minigrok import exercises
from minigrok.cli import main
from minigrok.exercises.isolated import run_isolated

from testutil import REPO

# Above the child's own 4 GiB: the 6 GB case below then fails because of the child's limit.
OUTER_MEMORY = 8 << 30
HANG = 3                      # --timeout for the files that never finish, seconds
BOUND = 20                    # the whole command line returns within this, seconds

GOOD = """
    import numpy as np

    def rms_norm(x, scale, eps=1e-5):
        x = np.asarray(x, np.float32)
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return (x / np.sqrt(ms + np.float32(eps)) * scale).astype(np.float32)
"""

# name -> (the student's rmsnorm.py, the words of the one-line reason)
CASES = {
    "loop_at_import": ("while True:\n    pass\n", f"timed out after {HANG} s"),
    "loop_in_function": ("def rms_norm(x, scale, eps=1e-5):\n    while True:\n        pass\n",
                         f"timed out after {HANG} s"),
    "sleep_in_function": ("import time\n\ndef rms_norm(x, scale, eps=1e-5):\n"
                          "    time.sleep(1e6)\n", f"timed out after {HANG} s"),
    "sys_exit_at_import": ("import sys\nsys.exit(0)\n",
                           "your code exited (sys.exit(0)) before the check finished"),
    "sys_exit_in_function": ("import sys\n\ndef rms_norm(x, scale, eps=1e-5):\n"
                             "    sys.exit(0)\n",
                             "your code exited (sys.exit(0)) before the check finished"),
    "os_exit_at_import": ("import os\nos._exit(0)\n",
                          "your code exited (exit status 0: os._exit(0) or similar)"),
    "os_exit_in_function": ("import os\n\ndef rms_norm(x, scale, eps=1e-5):\n    os._exit(0)\n",
                            "your code exited (exit status 0: os._exit(0) or similar)"),
    "raise_system_exit": ("def rms_norm(x, scale, eps=1e-5):\n    raise SystemExit\n",
                          "your code exited (sys.exit()) before the check finished"),
    "returns_a_string": ("def rms_norm(x, scale, eps=1e-5):\n    return 'PASSED'\n",
                         "your rms_norm() returned a str ('PASSED'), not an array of numbers"),
    "returns_none": ("def rms_norm(x, scale, eps=1e-5):\n    return None\n",
                     "your rms_norm() returned None"),
    "returns_a_huge_list": ("def rms_norm(x, scale, eps=1e-5):\n    return [0.0] * 10**6\n",
                            "out: expected shape"),
    "segfault": ("import ctypes\n\ndef rms_norm(x, scale, eps=1e-5):\n"
                 "    return ctypes.string_at(0)\n",
                 "your code crashed the check (SIGSEGV"),
    "allocates_100_gb": ("import numpy as np\n\ndef rms_norm(x, scale, eps=1e-5):\n"
                         "    return np.ones(10**11)\n", "your rms_norm() raised MemoryError"),
    # 6 GB fits the outer 8 GiB: only the child's 4 GiB limit stops it.
    "allocates_6_gb_at_import": ("import numpy as np\nA = np.empty(6 * 10**9, np.uint8)\n",
                                 "does not import: MemoryError"),
    "prints_fake_passed": ("print('PASSED: all 5 checks hold for rms_norm() (40 generated "
                           "examples each)')\n\ndef rms_norm(x, scale, eps=1e-5):\n"
                           "    return x\n", "FAIL  "),
    "fake_passed_then_os_exit": (
        "import os\nos.write(1, b'PASSED: all 5 checks hold for rms_norm()\\n')\nos._exit(0)\n",
        "your code exited (exit status 0"),
    # A verdict written blindly to every descriptor, the checker's report pipe among them.
    "forged_verdict": ("import os\nfor fd in range(3, 10):\n    try:\n        os.write(fd, "
                       "b'{\"verdict\": \"pass\"}\\n')\n    except OSError:\n        pass\n"
                       "os._exit(0)\n", "the checker's report came back garbled"),
}


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (OUTER_MEMORY, OUTER_MEMORY))


def _cli(*args):
    """(exit code, stdout, stderr, seconds) of ``python -m minigrok ARGS``."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "minigrok", *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case's command line, run in parallel: name -> (code, stdout, stderr, seconds)."""
    folder = tmp_path_factory.mktemp("students")
    jobs = {}
    for name, (source, _) in CASES.items():
        (folder / f"{name}.py").write_text(source)
        hangs = "timed out" in CASES[name][1]
        jobs[name] = ("exercises", "check", "rmsnorm", "--file", folder / f"{name}.py",
                      "--timeout", HANG if hangs else BOUND - 5)
    (folder / "good.py").write_text(textwrap.dedent(GOOD))
    jobs["good"] = ("exercises", "check", "rmsnorm", "--file", folder / "good.py")
    jobs["stub"] = ("exercises", "check", "rmsnorm")
    jobs["reference"] = ("exercises", "check", "rmsnorm", "--reference")
    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(_cli, *args) for name, args in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", CASES)
def test_hostile_student_file_fails_with_a_one_line_reason(name, runs):
    code, out, err, seconds = runs[name]
    assert code == 1, out + err
    assert "Traceback" not in out + err
    assert seconds < BOUND
    lines = out.splitlines()
    assert lines[0].startswith("exercise rmsnorm: ")
    assert len([line for line in lines if CASES[name][1] in line]) == 1, out
    assert lines[-1].startswith("FAILED: fix this, then run again: ")
    assert not any(line.startswith("PASSED") for line in lines), out


def test_what_the_student_prints_goes_to_stderr_not_the_report(runs):
    for name in ("prints_fake_passed", "fake_passed_then_os_exit"):
        code, out, err, _ = runs[name]
        assert code == 1 and "PASSED" not in out and "PASSED: all 5 checks" in err


def test_a_correct_solution_and_the_reference_still_pass(runs):
    for name in ("good", "reference"):
        code, out, err, seconds = runs[name]
        assert code == 0, out + err
        assert out.splitlines()[-1].startswith("PASSED: all ") and not err
        assert seconds < BOUND


def test_the_stub_still_fails(runs):
    code, out, err, _ = runs["stub"]
    assert code == 1 and not err
    assert "not implemented yet: open lessons/exercises/rmsnorm.py" in out


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e12", "soon"])
def test_a_bad_timeout_is_one_line_and_exit_2(value, capsys):
    try:
        code = main(["exercises", "check", "rmsnorm", "--reference", "--timeout", value])
    except SystemExit as e:                              # argparse's own (one line, code 2)
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert err.count("\n") == 1 and "--timeout" in err


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for init to reap it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_for(path: Path, seconds: float = 15) -> str:
    end = time.monotonic() + seconds
    while not (path.is_file() and path.read_text().endswith("\n")):
        assert time.monotonic() < end, f"{path} never written"
        time.sleep(0.05)
    return path.read_text()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_nothing_the_student_started_is_left_behind(tmp_path):
    # A process started by the student's code, and the child itself after a time out (the
    # exercise's own limit, here lowered).
    pids = tmp_path / "pids"
    student = tmp_path / "rmsnorm.py"
    student.write_text(textwrap.dedent(f"""
        import os, subprocess
        helper = subprocess.Popen(["sleep", "1000"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{helper.pid}}\\n")
        while True:
            pass
    """))
    out = []
    quick = dataclasses.replace(exercises.get("rmsnorm"), timeout=HANG)
    assert not run_isolated(quick, path=student, write=out.append)
    assert f"  timed out after {HANG} s" in "\n".join(out)
    for pid in map(int, pids.read_text().split()):
        end = time.monotonic() + 5
        while not _gone(pid):
            assert time.monotonic() < end, f"process {pid} left running"
            time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_child_ends_when_the_checker_is_killed(tmp_path):
    # kill -9 of the command line: the child's watchdog sees its stdin close and ends itself.
    pid_file = tmp_path / "pid"
    student = tmp_path / "rmsnorm.py"
    student.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(f'{{os.getpid()}}"
                       f"\\n')\ntime.sleep(1e6)\n")
    cli = subprocess.Popen([sys.executable, "-m", "minigrok", "exercises", "check", "rmsnorm",
                            "--file", student], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, preexec_fn=_limit_memory)
    try:
        child = int(_wait_for(pid_file))
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
        end = time.monotonic() + 10
        while not _gone(child):
            assert time.monotonic() < end, "the child outlived the checker"
            time.sleep(0.05)
    finally:
        cli.kill()
        cli.wait()
        if pid_file.is_file() and not _gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
