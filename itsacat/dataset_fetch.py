"""Download the original project's published cat/non-cat `datasets.h5`, checked and cached.

The file is pinned by its SHA-256 (`SHA256`): whatever the URL (`DEFAULT_URL`, the
`ITSACAT_DATASET_URL` variable, or one given), only those exact bytes are kept. The
download goes to a temporary file beside the cache (`$ITSACAT_HOME/datasets/`), is
checked, and only then renamed into place, so the cache holds the right file or nothing.
Every failure (no network, DNS, HTTP status, timeout, too large, wrong checksum, disk)
is a `FetchError`: one line, naming the URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

from itsacat.errors import UserError
from itsacat.progress import Progress

DEFAULT_URL = "https://github.com/darkreapyre/itsacat/raw/Demo-1/Notebooks/datasets/datasets.h5"
URL_VARIABLE = "ITSACAT_DATASET_URL"
SHA256 = "24eff5d858a0f6c929f531ff721bcee60646ede1a99bce9de7d05c18128e057f"
FILE_NAME = "datasets.h5"
# The real file is 3.2 MB: anything over this is not it, and is not read further.
MAX_BYTES = 100 * 1024 * 1024
# Seconds for each connect and read, and for the whole download.
TIMEOUT = 30.0
DEADLINE = 600.0
CHUNK = 64 * 1024
USER_AGENT = "itsacat-dataset-fetch"


class FetchError(UserError):
    """The dataset could not be downloaded or was not the expected file; one line why."""


def resolve_url(url: str | None = None) -> str:
    """`url` if given, else $ITSACAT_DATASET_URL if set, else `DEFAULT_URL`."""
    return url or os.environ.get(URL_VARIABLE, "").strip() or DEFAULT_URL


def cache_dir(home: Path) -> Path:
    return home / "datasets"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _valid(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and sha256_of(path) == sha256
    except OSError:
        return False


def cached(home: Path, sha256: str = SHA256) -> Path | None:
    """The cached dataset under `home` if it is there with the right checksum, else None."""
    path = cache_dir(home) / FILE_NAME
    return path if _valid(path, sha256) else None


def fetch(
    url: str,
    cache: Path,
    *,
    sha256: str = SHA256,
    max_bytes: int = MAX_BYTES,
    timeout: float = TIMEOUT,
    deadline: float = DEADLINE,
    progress: TextIO | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """`cache`/datasets.h5, downloaded from `url` unless it is already there and right.

    `progress`: a stream for the progress bar (None: stderr). `say`: told, in one line,
    when the cached copy is used instead of downloading. Raises `FetchError`; on any
    failure nothing is left in `cache` but what was there before.
    """
    target = cache / FILE_NAME
    if _valid(target, sha256):
        if say is not None:
            say(f"{target} already holds the dataset (sha256 {sha256[:12]}...): not downloading")
        return target
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise FetchError(f"cannot download {url!r}: only http:// and https:// URLs are fetched")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=cache, prefix=f".{FILE_NAME}.", suffix=".part")
    except OSError as e:
        raise FetchError(f"cannot write in {cache}: {e.strerror or e}") from e
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            got = _download(url, out, max_bytes, timeout, deadline, progress)
            out.flush()
            os.fsync(out.fileno())
        if got != sha256:
            raise FetchError(
                f"{url} is not the expected dataset: its sha256 is {got}, expected {sha256}; "
                "nothing was cached"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except OSError as e:
        raise FetchError(f"cannot write {target}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def _download(
    url: str,
    out: BinaryIO,
    max_bytes: int,
    timeout: float,
    deadline: float,
    progress: TextIO | None,
) -> str:
    """Stream `url` into `out`; its sha256. Network and HTTP failures are `FetchError`."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest = hashlib.sha256()
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise FetchError(
                    f"{url} is {total} bytes, over the limit of {max_bytes}: not the dataset"
                )
            bar = Progress(max(1, (total or 0) // 1024), "KB", progress) if total else None
            done = 0
            # read1: one receive at a time, so the deadline holds against a trickling server
            while block := response.read1(CHUNK):
                done += len(block)
                if done > max_bytes:
                    raise FetchError(f"{url} sent more than {max_bytes} bytes: not the dataset")
                if time.monotonic() - start > deadline:
                    raise FetchError(f"downloading {url} took over {deadline:g} s: gave up")
                digest.update(block)
                out.write(block)
                if bar is not None:
                    bar.update(min(done, total or done) // 1024)
            if bar is not None:
                bar.close()
            if total is not None and done != total:
                raise FetchError(f"{url} ended after {done} of {total} bytes")
    except urllib.error.HTTPError as e:
        raise FetchError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise FetchError(f"cannot download {url}: {_reason(e.reason)}") from e
    except TimeoutError as e:
        raise FetchError(f"cannot download {url}: no answer within {timeout:g} s") from e
    except (http.client.HTTPException, ConnectionError) as e:
        raise FetchError(f"cannot download {url}: {_reason(e)}") from e
    except ValueError as e:  # a malformed URL
        raise FetchError(f"cannot download {url!r}: {e}") from e
    except OSError as e:  # TLS errors while reading, a full disk, ...
        raise FetchError(f"cannot download {url}: {_reason(e)}") from e
    return digest.hexdigest()


def _reason(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror or reason})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    text = str(reason) or type(reason).__name__
    return text.splitlines()[0] if text else type(reason).__name__


def copy_to(source: Path, out: Path) -> Path:
    """Copy `source` to `out` (a file, or a directory to put `FILE_NAME` in), atomically."""
    dest = out / FILE_NAME if out.is_dir() else out
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f, source.open("rb") as src:
                shutil.copyfileobj(src, f)
            tmp.chmod(0o644)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    except OSError as e:
        raise FetchError(f"cannot write {dest}: {e.strerror or e}") from e
    return dest
