"""Layering: comm -> algorithms -> runner -> CLI; tasks independent of algorithms and comm."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "farsync"

FORBIDDEN = {
    "comm": {"algorithms", "tasks", "runner", "cli", "config", "report"},
    "tasks": {"comm", "algorithms", "runner", "cli", "config", "report"},
    "algorithms": {"runner", "cli", "config", "report", "tasks"},
    "compress": {"algorithms", "tasks", "runner", "cli", "config", "report", "loop", "api"},
    "optim": {"algorithms", "tasks", "runner", "cli", "config", "report", "loop", "api", "comm", "compress"},
    "yamlio": {"algorithms", "tasks", "runner", "cli", "config", "report", "loop", "api", "comm", "compress", "optim"},
    "stopping": {"algorithms", "tasks", "runner", "cli", "config", "report", "loop", "api", "comm", "compress", "optim"},
    "rundir": {"algorithms", "tasks", "runner", "cli", "config", "report", "loop", "api", "comm", "compress", "optim"},
    "config": {"runner", "cli", "report", "loop", "api", "launch", "sweep"},
    "api": {"runner", "cli", "report", "loop", "launch", "sweep"},
    "loop": {"runner", "cli", "report", "launch", "sweep"},
}


def farsync_imports(path: Path) -> set[str]:
    """Top-level farsync subpackages/modules imported by `path` (relative or absolute imports)."""
    pkg_parts = path.relative_to(SRC).parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - node.level + 1])
                mod = base + (node.module.split(".") if node.module else [])
                if not mod:
                    out.update(a.name for a in node.names)
                else:
                    out.add(mod[0])
            elif node.module and node.module.startswith("farsync."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("farsync."))
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_import_direction(layer):
    paths = [SRC / f"{layer}.py"] if (SRC / f"{layer}.py").is_file() else list((SRC / layer).rglob("*.py"))
    assert paths, layer
    for path in paths:
        bad = farsync_imports(path) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


def test_checker_sees_imports():
    assert "comm" in farsync_imports(SRC / "algorithms" / "base.py")
    assert "algorithms" in farsync_imports(SRC / "loop.py")
