"""The package's architecture, checked: three layers and the application, imports pointing one
way only (docs/architecture.md).

Every import in minigrok/ is read with ``ast``, at the top of a module and inside functions
alike, and resolved to the module it names. The rules:

* base (errors, environment, outputs) imports nothing else of minigrok but base;
* reference (the model's math) imports base and reference only;
* formats (checkpoints, tokenizer) adds reference;
* engine (kernels, threads, placement, streaming) adds formats;
* exercises (the grader, a client of the reference) imports base and reference only;
* export (writing checkpoints for other engines) imports base, reference and formats;
* training (the backward pass, the trainer) imports base, reference and formats;
* the application (api, cli, bench, golden, the package itself) may import anything;
* nothing but the application imports the engine, and no module imports itself back
  through others (no cycle).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minigrok"
ALLOWED = {
    "base": {"base"},
    "reference": {"base", "reference"},
    "formats": {"base", "reference", "formats"},
    "engine": {"base", "reference", "formats", "engine"},
    "exercises": {"base", "reference", "exercises"},
    "export": {"base", "reference", "formats", "export"},
    "training": {"base", "reference", "formats", "training"},
    "app": {"base", "reference", "formats", "engine", "exercises", "export", "training", "app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("reference", "formats", "engine", "exercises",
                                       "export", "training"):
        return parts[1]
    if module in ("minigrok.errors", "minigrok.environment", "minigrok.outputs"):
        return "base"
    return "app"


def imports(module: str) -> set[str]:
    """The minigrok modules ``module`` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            # ``from X import y``: y is a module where X/y.py exists, else a name in X
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "minigrok")
    return {n for n in found if n in MODULES} - {module}


GRAPH = {m: imports(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_module_imports_only_its_own_layer_and_those_below(module):
    wrong = {i: layer(i) for i in GRAPH[module] if layer(i) not in ALLOWED[layer(module)]}
    assert not wrong, f"{module} ({layer(module)}) imports {wrong}"


def test_the_layers_are_what_the_docs_say():
    assert layer("minigrok.reference.attention") == "reference"
    assert layer("minigrok.formats.safepickle") == "formats"
    assert layer("minigrok.engine.decode") == "engine"
    assert layer("minigrok.api") == layer("minigrok") == "app"
    assert layer("minigrok.errors") == "base"
    assert any("minigrok.engine.runtime" in GRAPH[m] for m in GRAPH)   # the reader sees imports


def test_there_is_no_import_cycle():
    done, path = set(), []

    def visit(m):
        if m in path:
            cycle = path[path.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if m in done:
            return
        path.append(m)
        for n in sorted(GRAPH[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(GRAPH):
        visit(m)


def test_a_planted_violation_is_caught(tmp_path):
    # The checker itself: an engine import inside a reference function must be seen.
    source = "def f():\n    from ..engine import weights\n    return weights\n"
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert node.level == 2 and node.module == "engine"
    MODULES["minigrok.reference.planted"] = tmp_path / "planted.py"
    (tmp_path / "planted.py").write_text(source)
    try:
        found = imports("minigrok.reference.planted")
    finally:
        del MODULES["minigrok.reference.planted"]
    assert found == {"minigrok.engine.weights"}
    assert layer("minigrok.engine.weights") not in ALLOWED["reference"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_readable_and_hold_no_kernel_source(module):
    text = MODULES[module].read_text()
    assert text.count("\n") <= 700, f"{module}: {text.count(chr(10))} lines (700 at most)"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            assert "__global__" not in node.value and "#include" not in node.value, \
                f"{module}: C/CUDA source in a Python string (put it in engine/kernels/)"
