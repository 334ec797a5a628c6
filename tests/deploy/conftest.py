"""Deploy tier: `itsacat deploy`'s packaging, plan and execution, offline.

What these tests may use: the packaging (`chalice package`, cfn-lint and the AWS CLI as
subprocesses), files in a temporary build folder, botocore's Stubber, a moto server of
their own on 127.0.0.1 standing in for AWS (`emulator`), and the installed distributions'
metadata (what the layer would hold). Never AWS itself nor PyPI, except the test marked
slow in test_layer.py, which downloads the real layer (`make slow`).

Held to here: during a test, a socket of this process may connect or bind to loopback
addresses only and names other than `localhost` are not looked up (so a boto3 client that
missed the emulator or the Stubber fails instead of reaching AWS), and an attempt fails the
test even if the code under test catches it. Subprocesses (`chalice package`, cfn-lint, the
AWS CLI, pip) run outside this check: they are pointed at the emulator or kept offline by
the code and the environment the tests give them, and pip reaches PyPI only in the slow test.

Fixtures: a small fake layer, one offline dry-run build, an emulator.

The fake layer has the packages' directories and a wheel's metadata but no binaries, so the
dry run (packaging, both final templates) takes seconds; the real layer is built by the slow
test in test_layer.py and by `make layer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from itsacat.deploy import package, plan
from tests.support.tiers import Guard, is_loopback

FAKE_PACKAGES = ("numpy", "h5py", "PIL", "aws_lambda_powertools")
TIER = "deploy"
RULE = "see tests/deploy/conftest.py; only the slow test in test_layer.py reaches PyPI"


@pytest.fixture(autouse=True)
def _deploy_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
    guard = Guard(TIER, RULE, monkeypatch)
    guard.forbid_sockets(allow=is_loopback)
    yield guard
    guard.check()


def make_fake_layer(root: Path) -> Path:
    """A layer directory that passes the checks: packages, wheel tags, no binaries."""
    python = root / "python"
    for name in FAKE_PACKAGES:
        (python / name).mkdir(parents=True, exist_ok=True)
        (python / name / "__init__.py").write_text(f"# fake {name}\n")
    info = python / "numpy-2.4.6.dist-info"
    info.mkdir(exist_ok=True)
    (info / "WHEEL").write_text(
        "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
        "Tag: cp312-cp312-manylinux_2_27_x86_64\nTag: cp312-cp312-manylinux_2_28_x86_64\n"
    )
    return root


@pytest.fixture
def fake_layer(tmp_path: Path) -> Path:
    return make_fake_layer(tmp_path / "layer")


@pytest.fixture(scope="session")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[plan.Settings, package.Build]:
    """One offline build (fake layer): the final templates the dry run writes."""
    base = tmp_path_factory.mktemp("deploy-build")
    settings = plan.Settings(
        region="eu-west-1",
        stack_name="itsacat",
        email="someone@example.com",
        build_dir=base / "build",
    )
    built = package.build(settings, layer_from=make_fake_layer(base / "layer"))
    return settings, built


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    """A moto server of our own on a free port; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def emulator_env(emulator: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """os.environ pointing boto3 and the AWS CLI at the emulator, ITSACAT_HOME in tmp."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "ITSACAT_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("ITSACAT_HOME", str(tmp_path / "home"))
    return emulator
