"""What is deployed holds nothing of the local stack or the development tools.

Opened here: the functions' code (`build/functions/`), the API as staged (`build/api/`, its
`vendor/`) and as packaged by Chalice (`build/api-package/deployment.zip`), all from the
offline dry-run build, and the layer: the distributions that `pip download` of
layers/requirements.txt brings, read from the same pinned versions installed here (the real
layer, downloaded from PyPI, is checked the same way by the slow test in test_layer.py).
Each part may import the standard library, its own packages, the layer's modules and what
the Lambda runtime provides (boto3, botocore), and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from itsacat.deploy import layer, package, plan
from tests.support.contents import TOOLING, closure, files_in, foreign_imports, top_level

ROOT = Path(__file__).resolve().parents[2]
# What the Lambda runtime provides besides the standard library.
RUNTIME = {"boto3", "botocore"}
# The Lambda platform, for the layer's requirement markers.
LAMBDA_ENVIRONMENT = {
    "python_version": layer.LAMBDA_PYTHON,
    "python_full_version": f"{layer.LAMBDA_PYTHON}.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


@pytest.fixture(scope="module")
def layer_modules() -> dict[str, set[str]]:
    """The layer's distributions, each with the top-level modules it installs."""
    requirements = layer.read_requirements(ROOT / "layers" / "requirements.txt")
    return closure(requirements, LAMBDA_ENVIRONMENT)


def _modules(dists: dict[str, set[str]]) -> set[str]:
    return set().union(*dists.values())


def test_the_layer_holds_no_tooling(layer_modules: dict[str, set[str]]) -> None:
    assert set(layer.REQUIRED) <= _modules(layer_modules)  # it read what the layer holds
    assert {"numpy", "h5py", "pillow", "aws-lambda-powertools"} <= set(layer_modules)
    held = {d: m & (TOOLING | {"chalice"}) for d, m in layer_modules.items()}
    assert {d: m for d, m in held.items() if m} == {}


def test_the_functions_code_is_the_handler_packages_only(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    functions = dry_run[1].functions
    assert {p.name for p in functions.iterdir()} == set(package.FUNCTION_PACKAGES)
    names = top_level(files_in(functions))
    assert names == set(package.FUNCTION_PACKAGES)
    assert not names & TOOLING


def test_the_functions_code_imports_only_the_runtime_and_the_layer(
    dry_run: tuple[plan.Settings, package.Build], layer_modules: dict[str, set[str]]
) -> None:
    allowed = set(package.FUNCTION_PACKAGES) | RUNTIME | _modules(layer_modules)
    assert foreign_imports(dry_run[1].functions, allowed) == {}


def test_the_api_holds_no_tooling_staged_or_packaged(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    out = dry_run[1].template.parent
    vendor = out / "api" / "vendor"
    assert top_level(files_in(vendor)) <= set(package.FUNCTION_PACKAGES)
    for staged in (out / "api", out / "api-package" / "deployment.zip"):
        names = top_level(files_in(staged))
        assert "chalicelib" in names, staged  # it read the API's code
        assert not names & TOOLING, staged


def test_the_api_imports_only_chalice_the_runtime_and_the_layer(
    dry_run: tuple[plan.Settings, package.Build], layer_modules: dict[str, set[str]]
) -> None:
    """The deployment zip holds app.py, chalicelib/, the vendored packages and Chalice's
    runtime (`chalice/app.py`), which Chalice puts in every package."""
    allowed = (
        {"app", "chalice", "chalicelib"}
        | set(package.FUNCTION_PACKAGES)
        | RUNTIME
        | _modules(layer_modules)
    )
    out = dry_run[1].template.parent
    assert foreign_imports(out / "api", allowed) == {}
    assert foreign_imports(out / "api-package" / "deployment.zip", allowed) == {}


def test_the_checks_see_a_tooling_import(tmp_path: Path) -> None:
    """The readers find what a planted import of the local stack or a tool would add."""
    code = tmp_path / "trainer_lambdas"
    code.mkdir()
    (code / "__init__.py").write_text(
        "import json\nfrom . import x\nfrom moto import mock_aws\n"
        "def f():\n    import importlib\n    return importlib.import_module('embedded.stack')\n"
    )
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text("")
    assert foreign_imports(tmp_path, {"trainer_lambdas"}) == {
        "trainer_lambdas/__init__.py": {"moto", "embedded"}
    }
    assert top_level(files_in(tmp_path)) & TOOLING == {"matplotlib"}
