"""The files Lambda gives a Python function, for the embedded stack, built once and cached.

A function on Lambda sees three places and nothing else: its code package (`/var/task`), its
layers (`/opt`), and the packages of the Python runtime itself (`/var/runtime`: AWS's runtime
interface client and the AWS SDK). The embedded stack gives each worker the same three:

- the layer is built with pip from `layers/requirements.txt` and `constraints.txt` for *this*
  interpreter (the layer `itsacat deploy` uploads is built for Lambda's platform instead,
  `itsacat.deploy.layer`), zipped once, and deployed like any layer, through the template;
- the runtime's packages (`embedded/lambda_runtime.txt`) are installed once into a folder;
- code packages and layers are read back from the emulator's S3, where `aws cloudformation
  package` put them, and unpacked once per content hash (the code version).

Everything lives under the cache folder (`$ITSACAT_CACHE`, default `~/.cache/itsacat`), keyed
by what it was built from, so a second `itsacat up` builds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LAYER_REQUIREMENTS = PROJECT_ROOT / "layers" / "requirements.txt"
RUNTIME_REQUIREMENTS = Path(__file__).resolve().parent / "lambda_runtime.txt"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


class BuildError(Exception):
    """A layer or the runtime's packages could not be built; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("ITSACAT_CACHE") or Path.home() / ".cache" / "itsacat")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time for `path` (two stacks may start at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fingerprint(*files: Path) -> str:
    digest = hashlib.sha256(f"{PYTHON} {sys.platform} {os.uname().machine}".encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _pip_install(requirements: Path, target: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-warn-script-location",
        "--only-binary=:all:",
        "--target",
        str(target),
        "-r",
        str(requirements),
        "-c",
        str(CONSTRAINTS),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"pip install -r {requirements.name} failed: {tail[0]}")


def runtime_packages() -> Path:
    """The folder of the Lambda Python runtime's own packages (awslambdaric, boto3)."""
    dest = cache_dir() / f"runtime-{PYTHON}-{_fingerprint(RUNTIME_REQUIREMENTS, CONSTRAINTS)}"
    if dest.is_dir():
        return dest
    with _locked(dest):
        if not dest.is_dir():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            _pip_install(RUNTIME_REQUIREMENTS, tmp)
            tmp.rename(dest)
    return dest


def local_layer_zip(requirements: Path = LAYER_REQUIREMENTS) -> Path:
    """The layer as a zip (`python/...` inside), built for this interpreter; cached."""
    dest = cache_dir() / f"layer-{PYTHON}-{_fingerprint(requirements, CONSTRAINTS)}.zip"
    if dest.is_file():
        return dest
    with _locked(dest):
        if not dest.is_file():
            staging = dest.with_suffix(".staging")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                _pip_install(requirements, staging / "python")
                tmp = dest.with_suffix(".tmp")
                tmp.write_bytes(zip_directory(staging))
                tmp.rename(dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return dest


def zip_directory(directory: Path) -> bytes:
    """A deterministic zip of a directory (sorted, fixed timestamps, no caches)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(str(path.relative_to(directory)), (1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def unpacked(s3: Any, bucket: str, key: str) -> Path:
    """The code package or layer at s3://bucket/key, unpacked once per version of its content
    (its ETag): several functions share a layer, and a stack restarts with the same code, so
    the object is downloaded only when that version is not unpacked yet."""
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]
    digest = hashlib.sha256(f"{bucket}/{key}@{etag}".encode()).hexdigest()
    dest = cache_dir() / "code" / digest[:32]
    if (dest / ".complete").is_file():
        return dest
    with _locked(dest):
        if not (dest / ".complete").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            obj = s3.get_object(Bucket=bucket, Key=key, IfMatch=etag)
            with zipfile.ZipFile(io.BytesIO(obj["Body"].read())) as archive:
                for info in archive.infolist():
                    path = archive.extract(info, dest)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        os.chmod(path, mode | 0o200)
            (dest / ".complete").write_text(json.dumps({"bucket": bucket, "key": key}))
    return dest
