"""The shape rules that import-linter cannot see (it checks turn_core's layers; pyproject.toml).

The pages are scripts above every layer: they render and call turn_core's public API, so they
import neither torch (the library owns the model) nor a ``_private`` name of turn_core (the
library may change those at will). And no function in turn_core runs past 80 lines, so each one
can be read at once. All checks read the source (AST): nothing is imported or run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "app.py", *(ROOT / "pages").glob("*.py")])
LIBRARY = sorted((ROOT / "turn_core").rglob("*.py"))
MAX_FUNCTION_LINES = 80
# The model's packages: a page that imports one has started doing the library's work.
TORCH_PACKAGES = ("torch", "torchvision", "timm")


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _top(module: str | None) -> str:
    return (module or "").split(".")[0]


def torch_imports(tree: ast.AST) -> list[str]:
    """'line N: module' for every import of a torch package anywhere in ``tree`` (functions too)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: {a.name}" for a in node.names if _top(a.name) in TORCH_PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _top(node.module) in TORCH_PACKAGES:
            found.append(f"line {node.lineno}: {node.module}")
    return found


def private_turn_core_names(tree: ast.AST) -> list[str]:
    """'line N: name' for every private turn_core name a script uses: ``from turn_core.x import _y``,
    a private module (``turn_core._x``), or an attribute ``m._y`` of a turn_core module bound to
    ``m`` by an import."""
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _top(a.name) != "turn_core":
                    continue
                if any(_is_private(part) for part in a.name.split(".")):
                    found.append(f"line {node.lineno}: {a.name}")
                modules.add(a.asname or "turn_core")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _top(node.module) == "turn_core":
            if any(_is_private(part) for part in node.module.split(".")):
                found.append(f"line {node.lineno}: {node.module}")
            for a in node.names:
                if _is_private(a.name):
                    found.append(f"line {node.lineno}: {node.module}.{a.name}")
                modules.add(a.asname or a.name)  # may be a module (from turn_core import views)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return sorted(set(found), key=lambda s: (int(s.split()[1].rstrip(":")), s))


def long_functions(tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """'name (N lines, line L)' for every function or method in ``tree`` longer than ``limit`` lines
    (from ``def`` to its last line, docstring included; decorators not counted)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{node.name} ({n} lines, line {node.lineno})")
    return out


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ------------------------------------------------------------------------------- the checks
@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_page_imports_no_torch(page):
    found = torch_imports(_tree(page))
    assert not found, f"{_rel(page)} imports the model's packages (move that into turn_core): {found}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_page_uses_no_private_turn_core_name(page):
    found = private_turn_core_names(_tree(page))
    assert not found, f"{_rel(page)} uses private turn_core names (give them a public name): {found}"


def test_no_function_in_turn_core_is_longer_than_80_lines():
    found = {_rel(p): long for p in LIBRARY if (long := long_functions(_tree(p)))}
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines: {found}"


def test_the_files_exist():
    # Guards the globs above: a moved folder must not turn every check into a pass over nothing.
    assert ROOT / "app.py" in PAGES and len(PAGES) >= 5
    assert ROOT / "turn_core" / "pipeline.py" in LIBRARY


# ----------------------------------------------------------- the checkers catch what they should
def test_torch_imports_finds_every_form():
    src = "import os\nimport torch.nn as nn\ndef f():\n    from timm import create_model\nimport numpy\n"
    assert torch_imports(ast.parse(src)) == ["line 2: torch.nn", "line 4: timm"]
    assert torch_imports(ast.parse("import torchaudio_like_name\nfrom . import torch\n")) == []


def test_private_turn_core_names_finds_every_form():
    src = ("from turn_core import views\nimport turn_core.rundir as rd\nfrom turn_core.scores import _p_given, margin\n"
           "import turn_core._hidden\nx = views._fmt_time(1) + rd._tmp + views.public\n"
           "from pages._shared import _cache\ny = st._private\nz = views.__name__\n")
    assert private_turn_core_names(ast.parse(src)) == [
        "line 3: turn_core.scores._p_given", "line 4: turn_core._hidden", "line 5: rd._tmp",
        "line 5: views._fmt_time"]


def test_long_functions_counts_def_to_last_line():
    def source(indent: str, n_body: int) -> str:
        return "".join(f"{indent}    x{i} = {i}\n" for i in range(n_body))

    ok = "@decorator\ndef ok():\n" + source("", 79)                  # def + 79 lines = 80
    long = "class C:\n    def m(self):\n" + source("    ", 80)         # def + 80 lines = 81
    assert long_functions(ast.parse(ok)) == []
    assert long_functions(ast.parse(long)) == ["m (81 lines, line 2)"]
