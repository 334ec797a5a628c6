"""The Lambda layer: numpy, h5py, pillow and Powertools, built for the Lambda platform.

Lambda runs Linux on x86_64 or arm64, not this machine, so the layer is made of wheels that
pip downloads *for that platform* (`pip download --platform manylinux_2_28_<machine>
--only-binary=:all: --python-version 3.12 --implementation cp`) at the versions pinned in
constraints.txt (`layers/requirements.txt` says which packages go in), unpacked into
`python/` as Lambda expects of a layer.

The binaries cannot be imported here when the architecture differs, so the checks read them
instead: each wheel's tags, each shared object's ELF machine and extension-module suffix,
and the newest glibc symbol version it needs, against the runtime's glibc. That last check is
why the functions run on python3.12: its Amazon Linux 2023 has glibc 2.34, while python3.11's
Amazon Linux 2 has 2.26, too old for the pinned numpy (2.27) and h5py (2.28) wheels.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

LAMBDA_PYTHON = "3.12"
RUNTIME = f"python{LAMBDA_PYTHON}"
RUNTIME_GLIBC = (2, 34)  # Amazon Linux 2023, which python3.12 runs on
# Lambda's limit on a function's unzipped code plus all of its layers.
UNZIPPED_LIMIT = 250 * 1024 * 1024
REQUIRED = ("numpy", "h5py", "PIL", "aws_lambda_powertools")
STAMP = ".itsacat-layer.json"


@dataclass(frozen=True)
class Arch:
    """What a Lambda architecture means for wheels and shared objects."""

    name: str  # as Lambda spells it
    machine: str  # as wheel tags and extension suffixes spell it
    elf_machine: int  # e_machine in an ELF header

    @property
    def platform(self) -> str:
        return f"manylinux_2_28_{self.machine}"


ARCHES = {
    "x86_64": Arch("x86_64", "x86_64", 0x3E),
    "arm64": Arch("arm64", "aarch64", 0xB7),
}


class LayerError(Exception):
    """The layer could not be built; the message says why."""


@dataclass
class LayerReport:
    """What the checks found: the size, the packages, and every problem (empty: good)."""

    path: Path
    unzipped_bytes: int
    packages: list[str]
    max_glibc: tuple[int, int] | None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def arch(name: str) -> Arch:
    try:
        return ARCHES[name]
    except KeyError:
        raise LayerError(f"unknown architecture {name!r} (one of {', '.join(ARCHES)})") from None


def read_requirements(path: Path) -> list[str]:
    """`name==version` lines, comments and blanks dropped."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pinned_mismatches(requirements: list[str], constraints: list[str]) -> list[str]:
    """Requirements whose pin is missing from, or differs from, constraints.txt."""

    def key(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = {}
    for line in constraints:
        name, _, version = line.partition("==")
        pins[key(name)] = version
    problems = []
    for line in requirements:
        name, sep, version = line.partition("==")
        if not sep:
            problems.append(f"{line}: not pinned with ==")
        elif pins.get(key(name)) != version:
            problems.append(f"{line}: constraints.txt pins {pins.get(key(name), 'nothing')}")
    return problems


def download_argv(
    python: str, requirements: Path, constraints: Path, dest: Path, arch_name: str
) -> list[str]:
    """The `pip download` that fetches the layer's wheels for the Lambda platform."""
    return [
        python,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        "--platform",
        arch(arch_name).platform,
        "--only-binary=:all:",
        "--python-version",
        LAMBDA_PYTHON,
        "--implementation",
        "cp",
        "-r",
        str(requirements),
        "-c",
        str(constraints),
    ]


def _fingerprint(requirements: Path, constraints: Path, arch_name: str) -> dict[str, str]:
    digest = hashlib.sha256(requirements.read_bytes() + constraints.read_bytes()).hexdigest()
    return {"arch": arch_name, "python": LAMBDA_PYTHON, "inputs": digest}


def build(
    dest: Path,
    arch_name: str,
    requirements: Path,
    constraints: Path,
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> Path:
    """Download and unpack the wheels into `dest/python`; reused when the inputs are unchanged."""
    fingerprint = _fingerprint(requirements, constraints, arch_name)
    stamp = dest / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == fingerprint:
        return dest
    wheels = dest.parent / f"{dest.name}-wheels-{arch_name}"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    argv = download_argv(sys.executable, requirements, constraints, wheels, arch_name)
    result = run(argv, check=False)
    if result.returncode != 0:
        raise LayerError(f"pip download failed (exit {result.returncode}): {' '.join(argv)}")
    shutil.rmtree(dest, ignore_errors=True)
    unpack(sorted(wheels.glob("*.whl")), dest / "python")
    stamp.write_text(json.dumps(fingerprint))
    return dest


def unpack(wheels: Iterable[Path], python_dir: Path) -> None:
    """Unpack wheels as pip would install them (purelib and platlib alike)."""
    python_dir.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(python_dir)


def unzipped_size(path: Path) -> int:
    """Bytes the directory takes once unzipped (apparent sizes: sparse files count in full)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def wheel_tag_ok(tag: str, target: Arch) -> bool:
    """Whether one wheel tag (`cp312-cp312-manylinux_2_28_x86_64`) runs on the target."""
    parts = tag.split("-")
    if len(parts) != 3:
        return False
    interpreter, abi, platform = parts
    py = "cp" + LAMBDA_PYTHON.replace(".", "")
    interpreters = set(interpreter.split("."))
    if abi == "abi3":
        versions = [int(i[3:]) for i in interpreters if re.fullmatch(r"cp3\d+", i)]
        python_ok = any(v <= int(py[3:]) for v in versions)
    else:
        python_ok = bool(interpreters & {"py3", py}) and abi in {"none", py}
    if platform == "any":
        return python_ok
    platform_ok = False
    for plat in platform.split("."):
        m = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", plat)
        legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
        if m:
            glibc, machine = (int(m[1]), int(m[2])), m[3]
        else:
            name, _, machine = plat.partition("_")
            if name not in legacy:
                continue
            glibc = legacy[name]
        platform_ok |= machine == target.machine and glibc <= RUNTIME_GLIBC
    return python_ok and platform_ok


_GLIBC = re.compile(rb"GLIBC_(\d+)\.(\d+)")
_EXTENSION = re.compile(r"\.cpython-(\d+)-([\w-]+)\.so$")


def check(
    layer_dir: Path,
    arch_name: str,
    other_bytes: int = 0,
    required: Iterable[str] = REQUIRED,
    limit: int = UNZIPPED_LIMIT,
) -> LayerReport:
    """Check a layer directory (containing `python/`) for the target; `other_bytes`: the code."""
    target = arch(arch_name)
    python_dir = layer_dir / "python"
    size = unzipped_size(layer_dir) if layer_dir.is_dir() else 0
    report = LayerReport(layer_dir, size, [], None)
    if not python_dir.is_dir():
        report.problems.append(f"{layer_dir}: no python/ directory (a layer's code lives there)")
        return report
    if size + other_bytes > limit:
        report.problems.append(
            f"layer and code take {(size + other_bytes) / 2**20:.1f} MB unzipped, over Lambda's "
            f"limit of {limit / 2**20:.0f} MB"
        )
    report.packages = sorted(p.name for p in python_dir.iterdir() if p.is_dir())
    for name in required:
        if not (python_dir / name / "__init__.py").is_file():
            report.problems.append(f"package {name} is missing from the layer")
    for wheel_file in sorted(python_dir.glob("*.dist-info/WHEEL")):
        tags = [
            line.split(":", 1)[1].strip()
            for line in wheel_file.read_text().splitlines()
            if line.startswith("Tag:")
        ]
        if not any(wheel_tag_ok(t, target) for t in tags):
            report.problems.append(
                f"{wheel_file.parent.name}: tags {', '.join(tags) or 'none'} do not run on "
                f"{RUNTIME} {target.name}"
            )
    for path in sorted(python_dir.rglob("*.so*")):
        if path.is_file() and not path.is_symlink():
            _check_shared_object(path, target, report)
    return report


def _check_shared_object(path: Path, target: Arch, report: LayerReport) -> None:
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return
    name = str(path.relative_to(report.path))
    machine = int.from_bytes(data[18:20], "little" if data[5] == 1 else "big")
    if machine != target.elf_machine:
        report.problems.append(f"{name}: built for ELF machine {machine:#x}, not {target.name}")
    m = _EXTENSION.search(path.name)
    py = LAMBDA_PYTHON.replace(".", "")
    if m and (m[1] != py or not m[2].startswith(target.machine)):
        report.problems.append(f"{name}: an extension for cpython-{m[1]}-{m[2]}")
    versions = [(int(a), int(b)) for a, b in _GLIBC.findall(data)]
    if versions:
        newest = max(versions)
        report.max_glibc = max(report.max_glibc or newest, newest)
        if newest > RUNTIME_GLIBC:
            report.problems.append(
                f"{name}: needs glibc {newest[0]}.{newest[1]}, {RUNTIME} has "
                f"{RUNTIME_GLIBC[0]}.{RUNTIME_GLIBC[1]}"
            )


def main(argv: list[str] | None = None) -> int:
    """`make layer`: build build/layer for one architecture and report on it."""
    import argparse

    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(
        prog="python -m itsacat.deploy.layer", description=main.__doc__
    )
    parser.add_argument("--arch", choices=sorted(ARCHES), default="x86_64")
    parser.add_argument("--dest", type=Path, default=root / "build" / "layer")
    args = parser.parse_args(argv)
    try:
        dest = build(
            args.dest, args.arch, root / "layers/requirements.txt", root / "constraints.txt"
        )
    except LayerError as e:
        print(f"layer: error: {e}", file=sys.stderr)
        return 2
    report = check(dest, args.arch)
    glibc = ".".join(map(str, report.max_glibc)) if report.max_glibc else "none"
    print(
        f"{dest}: {report.unzipped_bytes / 2**20:.1f} MB unzipped (limit "
        f"{UNZIPPED_LIMIT / 2**20:.0f} MB), {RUNTIME} {args.arch}, newest glibc needed {glibc}"
    )
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
