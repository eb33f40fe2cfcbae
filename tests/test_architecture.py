"""The layering rule, read from the source with `ast` (nothing is imported):

    core ← data_builders ← data, report ← train, eval, caption, plan ← runs ← cli

A module imports only its own layer or lower ones; packages on the same layer above core never
import each other (jobs never import jobs); string targets ("vlm_tune.x", "data_builders.x") handed
to importlib count as imports. Also: no source file over 400 lines, no function over 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

# (layer name, packages in it); lower layers first. Each package of a layer above core is a "room".
LAYERS = [
    ("core", ["vlm_tune", "vlm_tune.core", "vlm_tune.metrics"]),
    ("data_builders", ["data_builders"]),
    ("data", ["vlm_tune.data", "vlm_tune.report"]),
    ("jobs", ["vlm_tune.train", "vlm_tune.eval", "vlm_tune.caption", "vlm_tune.plan", "vlm_tune.rate",
              "vlm_tune.export"]),
    ("runs", ["vlm_tune.runs"]),
    ("cli", ["vlm_tune.cli", "vlm_tune.__main__"]),
]
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def source_files() -> list[Path]:
    return sorted([*(REPO / "src").rglob("*.py"), *(REPO / "data_builders").rglob("*.py")])


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO / "src" if path.is_relative_to(REPO / "src") else REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> tuple[int, str] | None:
    """(layer index, package) of a project module: the longest package prefix wins."""
    best = None
    for index, (_, packages) in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and (best is None or len(package) > len(best[1])):
                best = (index, package)
    return best


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module, string importlib targets included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.split(":")[0]
            if text.startswith(("vlm_tune.", "data_builders.")) and text.replace(".", "").replace("_", "").isalnum():
                found.append((node.lineno, text))
    return [(line, name) for line, name in found if name.split(".")[0] in ("vlm_tune", "data_builders")]


def violations() -> list[str]:
    problems = []
    for path in source_files():
        own = room_of(module_name(path))
        assert own is not None, f"{path} is in no layer: add its package to LAYERS"
        for line, target in imported_modules(path):
            other = room_of(target)
            if other is None or other[1] == own[1]:
                continue
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if other[0] > own[0]:
                problems.append(f"{where}: layer {LAYERS[own[0]][0]} must not import layer {LAYERS[other[0]][0]}")
            elif other[0] == own[0] and LAYERS[own[0]][0] not in ("core", "cli"):
                problems.append(f"{where}: {own[1]} and {other[1]} are siblings (jobs never import jobs)")
    return problems


def test_imports_go_one_way():
    assert violations() == []


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rule can fail: a core module importing a job is reported."""
    bad = REPO / "src" / "vlm_tune" / "core" / "_layer_probe.py"
    bad.write_text("import importlib\nfrom vlm_tune.train import sft\nimportlib.import_module('vlm_tune.runs.sweep')\n")
    try:
        found = violations()
    finally:
        bad.unlink()
    assert any("_layer_probe.py:2" in p and "must not import layer jobs" in p for p in found)
    assert any("_layer_probe.py:3" in p and "must not import layer runs" in p for p in found)


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_sizes(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name}: split it by job (≤ {MAX_FILE_LINES} lines)"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_command_table_help_and_readme_agree(capsys):
    """The README's command list is the table's usage text, as `vlm-tune --help` prints it."""
    from vlm_tune import cli
    from vlm_tune.runs.commands import COMMANDS, usage

    cli._check_commands()  # every command's module imports and has main(argv)
    assert cli.main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.strip() == usage().strip()
    for name in COMMANDS:
        assert f"\n  {name} " in shown, f"vlm-tune --help does not list {name}"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split(README_MARK, 2)
    assert len(block) == 3, f"README.md needs the command list between two {README_MARK!r} lines"
    listed = block[1].strip().removeprefix("```").removesuffix("```").strip()
    assert listed == usage().strip(), "README.md's command list differs from `vlm-tune --help`: paste it again"


README_MARK = "<!-- vlm-tune --help (tests/test_architecture.py checks this block) -->"
