"""What a deployed part holds and imports: readers for a directory, a zip and the layer.

tests/deploy/test_deployed_contents.py uses these to check that the functions' code, the
API's package and the layer hold nothing of the local stack or the development tools.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# Top-level modules of the CLI, the local stack, the tests and the development tools: none
# of them may be deployed.
TOOLING = frozenset(
    {
        "itsacat",
        "embedded",
        "tests",
        "bench",
        "moto",
        "samtranslator",
        "cfnlint",
        "awscli",
        "werkzeug",
        "flask",
        "docker",
        "yaml",
        "matplotlib",
        "pytest",
        "_pytest",
        "hypothesis",
        "selenium",
        "mypy",
        "ruff",
        "pyinstrument",
        "nbclient",
        "nbformat",
        "ipykernel",
        "IPython",
        "jupyter_client",
        "pip",
        "setuptools",
    }
)


def top_level(paths: Iterable[str]) -> set[str]:
    """The importable top-level names among relative paths (`numpy/x.py`, `six.py`)."""
    names: set[str] = set()
    for path in paths:
        first = path.split("/", 1)[0]
        name = first.removesuffix(".py") if "/" not in path else first
        if name.isidentifier():
            names.add(name)
    return names


def imported_modules(source: str, filename: str = "<source>") -> set[str]:
    """The top-level modules a Python source imports by absolute name: `import a.b`, `from a
    import b`, and `importlib.import_module("a")` or `__import__("a")` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def sources_in(root: Path) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every .py file under a directory or in a zip file."""
    if root.is_dir():
        for path in sorted(root.rglob("*.py")):
            yield path.relative_to(root).as_posix(), path.read_text()
    else:
        with zipfile.ZipFile(root) as archive:
            for name in sorted(archive.namelist()):
                if name.endswith(".py"):
                    yield name, archive.read(name).decode()


def files_in(root: Path) -> list[str]:
    """Relative paths of every file under a directory or in a zip file."""
    if root.is_dir():
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    with zipfile.ZipFile(root) as archive:
        return sorted(n for n in archive.namelist() if not n.endswith("/"))


def foreign_imports(root: Path, allowed: Iterable[str]) -> dict[str, set[str]]:
    """Per file under `root`, the modules it imports that are neither `allowed` nor stdlib."""
    ok = set(allowed) | set(sys.stdlib_module_names) | {"__future__"}
    out = {}
    for name, text in sources_in(root):
        extra = imported_modules(text, name) - ok
        if extra:
            out[name] = extra
    return out


def distribution_modules(dist: importlib.metadata.Distribution) -> set[str]:
    """The top-level modules a distribution installs."""
    listed = dist.read_text("top_level.txt")
    if listed:
        return {line.strip() for line in listed.splitlines() if line.strip().isidentifier()}
    names = top_level(str(f) for f in dist.files or [])
    return {n for n in names if not n.endswith("__pycache__")}


def closure(requirements: Iterable[str], environment: dict[str, str]) -> dict[str, set[str]]:
    """The distributions `pip install` of `requirements` brings, read from what is installed
    here (the same pinned versions), with markers evaluated in `environment`; each with the
    top-level modules it installs."""
    out: dict[str, set[str]] = {}
    todo = [(Requirement(r), "") for r in requirements]
    seen: set[tuple[str, str]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**environment, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            dist = importlib.metadata.distribution(req.name)
            out.setdefault(name, distribution_modules(dist))
            todo.extend((Requirement(r), wanted) for r in dist.requires or [])
    return out
