"""The layering rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl", "rewards", "data_mining")
LEAVES = ("rl.types", "rl.config", "rl.jsonl")
# Allowed imports between the packages (importer -> imported); anything else is a layering error.
ALLOWED = {("rewards", "rl"), ("data_mining", "rl"), ("data_mining", "rewards")}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import in `path`, at module level or inside a function: (module, line)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
    return out


def test_imports_between_packages_run_one_way():
    wrong = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module, line in _imports(path):
                top = module.split(".")[0]
                if top in PACKAGES and top != package and (package, top) not in ALLOWED:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
                if top == "rl" and package != "rl" and module not in LEAVES and module != "rl":
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}, which is not a leaf")
    assert not wrong, "\n".join(wrong)


def test_leaves_import_nothing_of_the_project():
    for leaf in LEAVES:
        path = ROOT / (leaf.replace(".", "/") + ".py")
        inner = [m for m, _ in _imports(path) if m.split(".")[0] in PACKAGES]
        assert not inner, f"{leaf} imports {inner}"


def test_no_function_is_longer_than_sixty_lines():
    files = [ROOT / "run_rl.py", *(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))]
    long = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)
