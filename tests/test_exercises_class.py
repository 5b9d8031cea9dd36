"""Grading a class: ``exercises check --all [--dir DIR] [--json]`` and ``exercises init DIR``.

Every exercise is checked in a child process of its own; a missing file fails that exercise,
a hanging one is stopped at --timeout; --json is exactly one array of
{name, passed, message, seconds} in teaching order. ``init`` copies the stubs that ship inside
the package (minigrok/exercises/stubs/, the same files as lessons/exercises/) so that a
pip-installed minigrok has them.
"""

import json
import time

from minigrok import exercises
from minigrok.cli import main

from testutil import REPO, run_cli

KEYS = {"name", "passed", "message", "seconds"}
HANG = 2                      # --timeout for the hanging solution, seconds

# A correct solution in a student's file: minigrok's own function under the student's name
# (the child puts this minigrok first on its path).
CORRECT = ("from minigrok.exercises.registry import EXERCISES\n\n"
           "{function} = EXERCISES[{name!r}].reference\n")


def _json(r) -> list[dict]:
    records = json.loads(r.stdout)                     # exactly one JSON document
    assert isinstance(records, list)
    assert [x["name"] for x in records] == exercises.names()     # teaching order
    for x in records:
        assert set(x) == KEYS, x
        assert isinstance(x["passed"], bool) and isinstance(x["message"], str)
        assert isinstance(x["seconds"], float | int) and x["seconds"] >= 0
        assert "\n" not in x["message"] and x["message"]
    return records


def _one_line_error(capsys, *args, words=()):
    try:
        code = main(["exercises", *map(str, args)])
    except SystemExit as e:                              # argparse's own (one line, code 2)
        code = e.code
    assert code == 2
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and err.startswith("minigrok"), err
    assert ": error: " in err, err
    for w in words:
        assert w in err, err
    return err


# ------------------------------------------------------------------------ the stubs ship

def test_shipped_stubs_and_the_working_copies_are_the_same_files():
    # One truth: minigrok/exercises/stubs/ (package data, what init copies) and
    # lessons/exercises/ (the students' working copies) hold identical files, one per
    # exercise and nothing else.
    names = set(exercises.names())
    shipped = {p.stem for p in exercises.SHIPPED_DIR.glob("*.py")}
    working = {p.stem for p in exercises.STUBS_DIR.glob("*.py")}
    assert shipped == names, f"minigrok/exercises/stubs/: {sorted(shipped ^ names)}"
    assert working == names, f"lessons/exercises/: {sorted(working ^ names)}"
    for name in sorted(names):
        assert exercises.shipped_stub(name).read_bytes() == \
            exercises.stub_path(name).read_bytes(), f"{name}.py differs between the folders"


def test_the_stubs_are_package_data():
    text = (REPO / "pyproject.toml").read_text()
    assert '"minigrok.exercises" = ["stubs/*.py"]' in text


# --------------------------------------------------------------------------- check --all

def test_every_stub_fails_not_implemented_yet():
    r = run_cli("exercises", "check", "--all", "--json", "--timeout", 30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert not r.stderr
    for x in _json(r):
        assert x["passed"] is False
        assert x["message"].startswith("not implemented yet"), x


def test_the_reference_passes_every_exercise():
    r = run_cli("exercises", "check", "--all", "--reference", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    for x in _json(r):
        assert x["passed"] is True, x
        assert x["message"].startswith("all ") and " checks hold for " in x["message"], x


def test_init_then_one_correct_solution_passes_and_the_rest_fail(tmp_path):
    folder = tmp_path / "alice"
    r = run_cli("exercises", "init", folder)
    assert r.returncode == 0 and not r.stderr, r.stderr
    for name in exercises.names():
        assert (folder / f"{name}.py").read_bytes() == exercises.shipped_stub(name).read_bytes()
    ex = exercises.get("rope")
    (folder / "rope.py").write_text(CORRECT.format(function=ex.function, name=ex.name))

    r = run_cli("exercises", "check", "--all", "--dir", folder, "--timeout", 30)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(exercises.names()) + 1
    for name, line in zip(exercises.names(), lines):
        verdict, shown, seconds, unit, *why = line.split()
        assert shown == name and unit == "s" and float(seconds) >= 0
        assert verdict == ("PASS" if name == "rope" else "FAIL"), line
        assert " ".join(why).startswith("all " if name == "rope" else "not implemented yet")
    assert lines[-1].startswith(f"1 of {len(exercises.names())} passed in ")

    # The one exercise alone, from the same folder.
    r = run_cli("exercises", "check", "rope", "--dir", folder)
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("PASSED"), r.stdout


def test_a_hanging_solution_is_stopped_and_missing_files_fail(tmp_path):
    # rmsnorm loops for ever; every other file is missing: a failure each, not an error.
    (tmp_path / "rmsnorm.py").write_text("def rms_norm(x, scale, eps=1e-5):\n"
                                         "    while True:\n        pass\n")
    start = time.monotonic()
    r = run_cli("exercises", "check", "--all", "--dir", tmp_path, "--json", "--timeout", HANG,
                timeout=60)
    elapsed = time.monotonic() - start
    assert r.returncode == 1, r.stdout + r.stderr
    records = _json(r)
    [hung] = [x for x in records if x["name"] == "rmsnorm"]
    assert hung["passed"] is False
    assert hung["message"].startswith(f"timed out after {HANG} s"), hung
    assert HANG <= hung["seconds"] < HANG + 5, hung
    for x in records:
        if x is hung:
            continue
        assert x["passed"] is False and x["seconds"] < 1
        assert x["message"] == f"missing file {tmp_path / x['name']}.py", x
    assert elapsed < HANG + 30


def test_a_failing_solution_is_summed_up_in_one_line(tmp_path):
    # The first failing property, and the first line of why.
    (tmp_path / "rmsnorm.py").write_text("def rms_norm(x, scale, eps=1e-5):\n    return x\n")
    results = exercises.check_all(tmp_path, only=["rmsnorm"], timeout=30)
    assert [r["name"] for r in results] == ["rmsnorm"] and not results[0]["passed"]
    prop = exercises.get("rmsnorm").properties[0].text
    assert results[0]["message"].startswith(f"{prop}: "), results[0]


# ------------------------------------------------------------------------ usage mistakes

def test_usage_mistakes_are_one_line_and_exit_2(capsys, tmp_path):
    _one_line_error(capsys, "check", "rope", "--all", words=["NAME or --all"])
    _one_line_error(capsys, "check", "--all", "--file", tmp_path / "rope.py", words=["--dir"])
    _one_line_error(capsys, "check", "--all", "--dir", tmp_path / "nowhere",
                    words=["no such folder"])
    _one_line_error(capsys, "check", "rope", "--dir", tmp_path / "nowhere",
                    words=["no such folder"])
    _one_line_error(capsys, "check", words=["--all"])
    _one_line_error(capsys, "check", "rope", "--json", words=["--json"])
    _one_line_error(capsys, "check", "--all", "--timeout", "0", words=["--timeout"])
    _one_line_error(capsys, "check", "rope", "--dir", tmp_path, "--file", tmp_path / "rope.py")
    _one_line_error(capsys, "check", "--all", "--dir", tmp_path, "--reference")


def test_without_the_repository_the_error_suggests_init(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(exercises, "STUBS_DIR", tmp_path / "absent")   # as after pip install
    _one_line_error(capsys, "check", "rope", words=["--file", "exercises init DIR", "--dir"])
    _one_line_error(capsys, "check", "--all", words=["exercises init DIR", "--dir"])


# ------------------------------------------------------------------------------ init DIR

def test_init_refuses_to_overwrite_and_force_replaces_only_stubs(capsys, tmp_path):
    folder = tmp_path / "class" / "bob"                  # parents made too
    assert main(["exercises", "init", str(folder)]) == 0
    assert "wrote " in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.py" for n in
                                                              exercises.names())
    work = "def apply_rope(x, positions, base=10000):\n    return x  # my work\n"
    (folder / "rope.py").write_text(work)
    (folder / "notes.py").write_text("# mine\n")
    (folder / "notes.txt").write_text("mine\n")

    err = _one_line_error(capsys, "init", str(folder), words=["--force"])
    assert str(folder / f"{exercises.names()[0]}.py") in err    # names the first stub there
    assert (folder / "rope.py").read_text() == work       # nothing written

    assert main(["exercises", "init", str(folder), "--force"]) == 0
    capsys.readouterr()
    assert (folder / "rope.py").read_bytes() == exercises.shipped_stub("rope").read_bytes()
    assert (folder / "notes.py").read_text() == "# mine\n"
    assert (folder / "notes.txt").read_text() == "mine\n"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]   # no temporaries


def test_init_into_a_file_is_an_error(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    _one_line_error(capsys, "init", str(tmp_path / "file"), words=["not a folder"])
