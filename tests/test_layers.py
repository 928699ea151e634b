"""The import direction of DESIGN.md, checked on the source: a module imports only from folders
listed before it (codebook <- storefronts <- agent <- harness; inside harness: drivers <- sim <-
eval <- cli). Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("codebook", "storefronts", "agent", "harness")
HARNESS_LAYERS = ("drivers", "sim", "eval", "cli")


def layer(module: str) -> tuple[int, int] | None:
    """(package rank, harness layer rank) of a dotted module name of ours; None for others."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    inner = HARNESS_LAYERS.index(parts[1]) if parts[0] == "harness" and len(parts) > 1 and parts[1] in HARNESS_LAYERS else -1
    return PACKAGES.index(parts[0]), inner


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `import x` and `from x import y` in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


SOURCES = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path):
    own = layer(module_name(path))
    backwards = []
    for line, module in imported_modules(path):
        theirs = layer(module)
        if theirs is None:
            continue
        if theirs[0] > own[0] or (theirs[0] == own[0] == PACKAGES.index("harness") and -1 < own[1] < theirs[1]):
            backwards.append(f"line {line}: {module}")
    assert not backwards, f"{module_name(path)} imports from a later layer: {backwards}"


def test_the_check_sees_a_backward_import():
    assert layer("harness.sim.simulate") < layer("harness.eval.report")
    assert layer("agent.page") < layer("harness.drivers.base")
    assert layer("numpy") is None
