"""The dependencies pyproject.toml declares per part: the functions' are the layer's."""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from itsacat.errors import UserError
from tests.support.contents import closure, foreign_imports

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    """Normalised distribution names (`aws_lambda_powertools==3.37.0` -> aws-lambda-powertools)."""
    out = set()
    for line in requirements:
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]).lower())
    return out


def test_the_functions_dependencies_are_the_layers_and_boto3() -> None:
    """`dependencies` is what the functions import: the layer's packages, and boto3, which
    the Lambda runtime provides (so it is not in the layer)."""
    layer = names((ROOT / "layers" / "requirements.txt").read_text().splitlines())
    assert layer  # it read the layer's requirements
    assert names(PROJECT["dependencies"]) == layer | {"boto3"}


def test_the_tools_are_extras_and_dev_pulls_the_others() -> None:
    extras = PROJECT["optional-dependencies"]
    assert {"api", "stack", "reports", "dev"} <= set(extras)
    tools = {"moto", "cfn-lint", "awscli", "matplotlib", "chalice", "pytest", "mypy", "ruff"}
    assert not names(PROJECT["dependencies"]) & tools
    assert "chalice" in names(extras["api"])
    assert {"moto", "aws-sam-translator", "awscli", "cfn-lint"} <= names(extras["stack"])
    assert "matplotlib" in names(extras["reports"])
    assert any(re.fullmatch(r"itsacat\[.*\bstack\b.*\]", r) for r in extras["dev"])
    assert any(re.fullmatch(r"itsacat\[.*\breports\b.*\]", r) for r in extras["dev"])


def requirements(*extras: str) -> list[str]:
    """The project's requirements with these extras, its references to itself expanded."""
    out, todo, seen = list(PROJECT["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in PROJECT["optional-dependencies"][extra]:
            req = Requirement(line)
            if req.name == PROJECT["name"]:
                todo.extend(req.extras)
            else:
                out.append(line)
    return out


@pytest.mark.parametrize(
    "folders, extras, own",
    [
        (["trainer_lambdas", "state"], [], {"trainer_lambdas", "state"}),
        (["chalice_app"], ["api"], {"app", "chalicelib", "trainer_lambdas", "state"}),
        (
            ["itsacat", "embedded"],
            ["stack", "reports"],
            {"itsacat", "embedded", "chalice_app", "chalicelib", "trainer_lambdas", "state"},
        ),
    ],
)
def test_each_part_imports_only_what_its_dependencies_install(
    folders: list[str], extras: list[str], own: set[str]
) -> None:
    """Read from the distributions installed here: what `pip install` of the part's
    requirements brings (the functions: `dependencies`; the API: `api`; the `itsacat`
    command and the embedded stack: `stack` and `reports`)."""
    installed = closure(requirements(*extras), default_environment())
    modules = set().union(*installed.values())
    for folder in folders:
        found = foreign_imports(ROOT / folder, modules | own)
        # notebook.py displays through IPython only when a notebook's kernel runs it
        found.get("notebook.py", set()).discard("IPython")
        assert {f: m for f, m in found.items() if m} == {}, folder


def test_reports_without_matplotlib_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "itsacat.report", raising=False)
    with pytest.raises(UserError, match=r"pip install 'itsacat\[reports\]'"):
        importlib.import_module("itsacat.report")

    from itsacat.cli import main

    assert main(["report", "run-1"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'itsacat[reports]'" in err and "Traceback" not in err
