"""The layer: pins, the pip command, the platform and size checks (fast, on fakes), and the
real build from PyPI (slow)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from itsacat.deploy import layer
from tests.deploy.conftest import make_fake_layer
from tests.support.contents import TOOLING, top_level

ROOT = Path(__file__).resolve().parents[2]


def test_layer_requirements_are_the_pinned_versions() -> None:
    requirements = layer.read_requirements(ROOT / "layers" / "requirements.txt")
    constraints = layer.read_requirements(ROOT / "constraints.txt")
    assert {r.split("==")[0].lower() for r in requirements} >= {"numpy", "h5py", "pillow"}
    assert layer.pinned_mismatches(requirements, constraints) == []


def test_pinned_mismatches_names_the_drift() -> None:
    problems = layer.pinned_mismatches(["numpy==1.0", "h5py"], ["numpy==2.4.6"])
    assert problems == ["numpy==1.0: constraints.txt pins 2.4.6", "h5py: not pinned with =="]


@pytest.mark.parametrize(
    ("arch", "platform"),
    [("x86_64", "manylinux_2_28_x86_64"), ("arm64", "manylinux_2_28_aarch64")],
)
def test_download_command_targets_the_lambda_platform(arch: str, platform: str) -> None:
    argv = layer.download_argv("py", Path("req.txt"), Path("c.txt"), Path("w"), arch)
    assert argv[:4] == ["py", "-m", "pip", "download"]
    joined = " ".join(argv)
    assert f"--platform {platform}" in joined
    assert "--only-binary=:all:" in argv
    assert f"--python-version {layer.LAMBDA_PYTHON} --implementation cp" in joined
    assert "-r req.txt -c c.txt" in joined


def test_template_runtime_is_the_layers_python() -> None:
    text = (ROOT / "templates" / "template.yaml").read_text()
    assert f"Runtime: {layer.RUNTIME}" in text
    assert f"CompatibleRuntimes: [{layer.RUNTIME}]" in text


@pytest.mark.parametrize(
    ("tag", "arch", "ok"),
    [
        ("cp312-cp312-manylinux_2_28_x86_64", "x86_64", True),
        ("cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64", "x86_64", True),
        ("cp312-cp312-manylinux2014_x86_64", "x86_64", True),
        ("cp312-cp312-manylinux_2_28_aarch64", "arm64", True),
        ("cp312-cp312-manylinux_2_28_aarch64", "x86_64", False),
        ("cp311-cp311-manylinux_2_28_x86_64", "x86_64", False),
        ("cp312-cp312-manylinux_2_39_x86_64", "x86_64", False),  # newer glibc than AL2023
        ("cp312-cp312-macosx_11_0_arm64", "arm64", False),
        ("cp38-abi3-manylinux_2_17_x86_64", "x86_64", True),
        ("py3-none-any", "arm64", True),
    ],
)
def test_wheel_tags(tag: str, arch: str, ok: bool) -> None:
    assert layer.wheel_tag_ok(tag, layer.arch(arch)) is ok


def test_fake_layer_passes(fake_layer: Path) -> None:
    report = layer.check(fake_layer, "x86_64")
    assert report.problems == []
    assert {"numpy", "h5py", "PIL"} <= set(report.packages)


def test_size_check_counts_sparse_files_and_the_code(fake_layer: Path) -> None:
    big = fake_layer / "python" / "numpy" / "big.bin"
    with big.open("wb") as f:  # sparse: takes no disk, counts in full once unzipped
        f.truncate(layer.UNZIPPED_LIMIT - 10_000)
    assert layer.check(fake_layer, "x86_64").problems == []
    problems = layer.check(fake_layer, "x86_64", other_bytes=20_000).problems
    assert len(problems) == 1
    assert "over Lambda's limit of 250 MB" in problems[0]


def _elf(machine: int, glibc: str) -> bytes:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5] = 2, 1  # 64-bit, little-endian
    header[18:20] = machine.to_bytes(2, "little")
    return bytes(header) + f"\0GLIBC_2.17\0{glibc}\0".encode()


def test_shared_objects_are_checked_for_machine_python_and_glibc(fake_layer: Path) -> None:
    core = fake_layer / "python" / "numpy"
    (core / "ok.cpython-312-x86_64-linux-gnu.so").write_bytes(_elf(0x3E, "GLIBC_2.28"))
    assert layer.check(fake_layer, "x86_64").problems == []
    assert layer.check(fake_layer, "x86_64").max_glibc == (2, 28)

    (core / "arm.cpython-312-aarch64-linux-gnu.so").write_bytes(_elf(0xB7, "GLIBC_2.17"))
    (core / "old.cpython-311-x86_64-linux-gnu.so").write_bytes(_elf(0x3E, "GLIBC_2.17"))
    (core / "libnew.so.1").write_bytes(_elf(0x3E, "GLIBC_2.38"))
    problems = "\n".join(layer.check(fake_layer, "x86_64").problems)
    assert "arm.cpython-312-aarch64-linux-gnu.so: built for ELF machine 0xb7" in problems
    assert "an extension for cpython-311" in problems
    assert "libnew.so.1: needs glibc 2.38, python3.12 has 2.34" in problems


def test_missing_packages_and_wrong_tags_are_problems(tmp_path: Path) -> None:
    make_fake_layer(tmp_path)
    (tmp_path / "python" / "h5py" / "__init__.py").unlink()
    report = layer.check(tmp_path, "arm64")
    assert "package h5py is missing from the layer" in report.problems
    assert any("numpy-2.4.6.dist-info: tags" in p for p in report.problems)
    assert "no python/ directory" in layer.check(tmp_path / "python", "x86_64").problems[0]


def _wheel(name: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return buf.getvalue()


def test_build_unpacks_the_downloaded_wheels_and_reuses_them(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake_pip(argv: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        calls.append(argv)
        dest = Path(argv[argv.index("--dest") + 1])
        (dest / "numpy-2.4.6-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(
            _wheel("numpy", {"numpy/__init__.py": "", "numpy-2.4.6.dist-info/WHEEL": ""})
        )
        return subprocess.CompletedProcess(argv, 0)

    req, con = tmp_path / "req.txt", tmp_path / "c.txt"
    req.write_text("numpy==2.4.6\n")
    con.write_text("numpy==2.4.6\n")
    dest = layer.build(tmp_path / "layer", "x86_64", req, con, run=fake_pip)
    assert (dest / "python" / "numpy" / "__init__.py").is_file()
    layer.build(tmp_path / "layer", "x86_64", req, con, run=fake_pip)
    assert len(calls) == 1  # same inputs: reused
    layer.build(tmp_path / "layer", "arm64", req, con, run=fake_pip)
    assert len(calls) == 2
    assert "manylinux_2_28_aarch64" in calls[1]


def test_build_reports_a_failed_download(tmp_path: Path) -> None:
    req = tmp_path / "req.txt"
    req.write_text("numpy==2.4.6\n")

    def failing(argv: list[str], check: bool) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 1)

    with pytest.raises(layer.LayerError, match="pip download failed"):
        layer.build(tmp_path / "layer", "x86_64", req, req, run=failing)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_real_layer_builds_from_pypi_for_lambda(arch: str, tmp_path: Path) -> None:
    """Downloads about 30 MB of wheels (pip's cache makes a second run quick)."""
    dest = layer.build(
        tmp_path / "layer", arch, ROOT / "layers" / "requirements.txt", ROOT / "constraints.txt"
    )
    report = layer.check(dest, arch)
    assert report.problems == []
    assert {"numpy", "h5py", "PIL", "aws_lambda_powertools"} <= set(report.packages)
    # nothing of the local stack or the tools (test_deployed_contents.py checks the same offline)
    python = dest / "python"
    assert not top_level(p.relative_to(python).as_posix() for p in python.rglob("*")) & TOOLING
    assert report.unzipped_bytes < layer.UNZIPPED_LIMIT
    machine = layer.arch(arch).machine
    assert list((dest / "python" / "numpy").rglob(f"*.cpython-312-{machine}-linux-gnu.so"))
    # The pure-Python part of the layer imports here; the binaries need CPython 3.12.
    env = {**os.environ, "PYTHONPATH": str(dest / "python")}
    code = "import jmespath, aws_lambda_powertools; print(aws_lambda_powertools.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert str(dest) in out.stdout
