"""How llama_cli's modules import each other: no cycles, and no torch before a command needs it.

The cycle check reads the source (every import statement, module-level, inside a function or
under `if TYPE_CHECKING:`), so it fails on a cycle that only some code path or the type checker
follows: a module that needs another's type without importing it names a Protocol instead
(model.CacheView, detokenize.Vocabulary).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llama_cli"


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its __init__.py)."""
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parents, base] if base else parents)
            for alias in node.names:  # `from . import x` names a module; `from .m import f` names m
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    # A module's own package runs first anyway: an edge to it is no cycle of the module's making.
    return {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}


def import_cycles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop (strongly connected components)."""
    modules = module_files(root)
    edges = {name: imported_modules(name, path, modules) for name, path in modules.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative (the import graph can be deep)
        work = [(start, iter(sorted(edges[start])))]
        order[start] = low[start] = len(order)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in order:
                    order[child] = low[child] = len(order)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], order[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == order[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

    for name in sorted(edges):
        if name not in order:
            visit(name)
    return groups


def test_no_import_cycles() -> None:
    cycles = import_cycles(PACKAGE)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(group) for group in cycles)


def test_the_check_finds_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (package / "sub" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n")
    (package / "sub" / "c.py").write_text("import pkg.a\n")
    assert import_cycles(package) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    (package / "sub" / "c.py").write_text("")
    assert import_cycles(package) == []
    (package / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n")
    assert import_cycles(package) == [["pkg.a", "pkg.b", "pkg.sub.c"]]  # a cycle the type checker follows counts too


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "-t", "-1", "x"],
        ["generate", "--dtype", "foo", "x"],
        ["chat", "--top-p", "2"],
        ["summarize", "--length", "huge"],
        ["show", "--help"],
    ],
)
def test_usage_errors_and_help_come_before_torch(args: list[str]) -> None:
    code = (
        f"import sys\nfrom llama_cli.cli import app\ntry:\n    app({args!r})\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr


def test_every_data_file_of_the_package_ships_in_the_wheel() -> None:
    """Files under llama_cli/ that are not Python (the kernels' C sources) reach an installed copy
    only through package-data: a non-editable install without them cannot build the kernels."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).parents[1]
    package_data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [f"{package.replace('.', '/')}/{pattern}" for package, patterns in package_data.items() for pattern in patterns]
    data = [p.relative_to(root).as_posix() for p in (root / "llama_cli").rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data  # the C sources at least
    for name in data:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in shipped), f"{name} is not in [tool.setuptools.package-data]"
