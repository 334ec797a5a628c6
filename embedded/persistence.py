"""The emulator's data on disk, so that it survives `itsacat down`, a reboot and a crash.

What is kept is the *data* moto holds, not the resources: every S3 bucket's objects (all
versions with their version ids, metadata, ETags and content types, delete markers too; a
run's id is derived from its upload's version id), every DynamoDB table's items, every
CloudWatch Logs group's streams and events, and every SQS queue's messages (visible and in
flight; an in-flight one comes back when its visibility timeout ends, as on AWS). The
resources themselves are created by CloudFormation at each `itsacat up`; `restore` then
pours the saved data into the resources of the same names and returns the names it could
not place (a table the template no longer declares, say). The deployment bucket is left
out: `itsacat up` uploads the code packages into it afresh.

The values are moto's own objects (FakeKey, FakeDeleteMarker, Item, LogEvent, Message),
pickled as they are: moto's FakeKey pickles its content (`__getstate__`), a table's items
and a queue's messages are self-contained, and a log stream is kept without its reference
to the group. A snapshot therefore belongs to the moto version that wrote it, and says so.

`Saver` takes the snapshots inside the emulator. A request that may change data marks it
dirty; a daemon thread then takes a snapshot at most every `SNAPSHOT_PERIOD_S`, and the
emulator takes a last one when it is stopped (SIGTERM). A snapshot is one point in time
across all services (an upload and the notification it queued are both in it, or neither
is): under the emulator's request lock the process forks, and the child, a copy-on-write
image of that instant, pickles and writes it (temporary file, fsync, `os.replace`) while
the emulator serves on. A kill -9 thus loses the writes of the last ~5 s. Measured with
`python -m itsacat.bench.snapshot_lock` on this project's 2-core machine (40 MB of object
versions, 3,000 items holding 12 MB of weights, 20,000 log events; a 57 MB snapshot): the
lock is held 10 ms on a quiet machine and 15-30 ms with both cores busy, the snapshot is
on disk 0.6-1 s later; pickling under the lock instead would hold it 260-520 ms. The fork
needs objects in memory (moto moves those over 5 MB to temporary files, whose file offset
the child would share), and the child may need up to the data's size in memory.

Saving starts only once `restore` has run (`POST /_itsacat/restore`, which `itsacat up`
calls after creating the stacks), so a start that fails can never overwrite saved data with
an empty stack's.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import signal
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from embedded.deploy import ACCOUNT_ID, DEPLOYMENT_BUCKET, REGION

SNAPSHOT_FILE = "emulator-data.pickle"
SNAPSHOT_PERIOD_S = 5.0  # measured: every 2 s cost the default training about 10% of its time
_FORMAT = 1
_MAGIC = b"itsacat emulator data\n"


class SnapshotError(Exception):
    """A snapshot could not be read or applied; the message names the file."""


@dataclass
class Restored:
    """What `restore` put back, and what it could not place."""

    path: str
    saved_at: float
    objects: int = 0  # object versions and delete markers
    items: int = 0
    log_events: int = 0
    messages: int = 0
    unplaced: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved_at))
        text = (
            f"restored {_many(self.objects, 'object')}, {_many(self.items, 'item')}, "
            f"{_many(self.log_events, 'log event')} and {_many(self.messages, 'queued message')} "
            f"from {Path(self.path).parent} (saved {when})"
        )
        if self.unplaced:
            text += f"; not placed: {', '.join(self.unplaced)}"
        return text


def _many(count: int, thing: str) -> str:
    return f"{count:,} {thing}{'' if count == 1 else 's'}"


def _backends() -> tuple[Any, Any, Any, Any]:
    """The S3, DynamoDB, CloudWatch Logs and SQS backends of the stack's account and region."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.logs.models import logs_backends
    from moto.s3.models import s3_backends
    from moto.sqs.models import sqs_backends
    from moto.utilities.utils import get_partition

    return (
        s3_backends[ACCOUNT_ID][get_partition(REGION)],
        dynamodb_backends[ACCOUNT_ID][REGION],
        logs_backends[ACCOUNT_ID][REGION],
        sqs_backends[ACCOUNT_ID][REGION],
    )


def capture() -> dict[str, Any]:
    """The data, as references to moto's live objects: pickle it, or fork, before the
    emulator's lock is released."""
    s3, dynamodb, logs, sqs = _backends()
    return {
        "s3": {
            name: {key: list(versions) for key, versions in bucket.keys.lists()}
            for name, bucket in s3.buckets.items()
            if name != DEPLOYMENT_BUCKET
        },
        "dynamodb": {
            name: {"key": [table.hash_key_attr, table.range_key_attr], "items": table.items}
            for name, table in dynamodb.tables.items()
        },
        "logs": {
            name: {
                stream_name: {k: v for k, v in vars(stream).items() if k != "log_group"}
                for stream_name, stream in group.streams.items()
            }
            for name, group in logs.groups.items()
        },
        "sqs": {
            name: {"messages": list(queue._messages), "deleted": set(queue.deleted_messages)}
            for name, queue in sqs.queues.items()
        },
    }


def counts(data: dict[str, Any]) -> dict[str, int]:
    """How many objects, items, log events and messages `data` holds."""
    return {
        "objects": sum(len(v) for keys in data["s3"].values() for v in keys.values()),
        "items": sum(_item_count(table) for table in data["dynamodb"].values()),
        "log_events": sum(
            len(stream["events"]) for group in data["logs"].values() for stream in group.values()
        ),
        "messages": sum(len(queue["messages"]) for queue in data["sqs"].values()),
    }


def _item_count(table: dict[str, Any]) -> int:
    items = table["items"]
    return sum(len(v) for v in items.values()) if table["key"][1] else len(items)


def dump(data: dict[str, Any], saved_at: float) -> tuple[bytes, bytes]:
    """(header, payload) of a snapshot of `data`."""
    import moto

    payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    header = {
        "format": _FORMAT,
        "moto": moto.__version__,
        "saved_at": saved_at,
        "bytes": len(payload),
        "crc32": zlib.crc32(payload),
        "counts": counts(data),
    }
    return json.dumps(header).encode() + b"\n", payload


def write(
    path: Path, header: bytes, payload: bytes, keep: Callable[[], bool] | None = None
) -> bool:
    """Replace `path` atomically (a crash leaves the old snapshot or the new, never half),
    unless `keep()` says no once the new one is on disk. Whether it was replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    if keep is not None and not keep():
        tmp.unlink()
        return False
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return True


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the payload of the snapshot at `path`, checked; SnapshotError if not."""
    import moto

    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SnapshotError(f"{path} cannot be read ({e.strerror})") from e
    if not raw.startswith(_MAGIC):
        raise SnapshotError(f"{path} is not a snapshot of the emulator's data")
    line, _, payload = raw[len(_MAGIC) :].partition(b"\n")
    try:
        header = json.loads(line)
        size, crc, version = header["bytes"], header["crc32"], header["moto"]
    except (ValueError, KeyError, TypeError) as e:
        raise SnapshotError(f"{path} is damaged (its header does not parse)") from e
    if header.get("format") != _FORMAT:
        raise SnapshotError(f"{path} has format {header.get('format')}, not {_FORMAT}")
    if len(payload) != size or zlib.crc32(payload) != crc:
        raise SnapshotError(f"{path} is damaged (truncated or altered: its checksum differs)")
    if version != moto.__version__:
        raise SnapshotError(
            f"{path} was written by moto {version}, this is moto {moto.__version__}"
        )
    return header, payload


def check(path: Path) -> None:
    """Raise SnapshotError if the snapshot at `path` exists and is damaged (no moto state used)."""
    if path.exists():
        read_header(path)


def restore(path: Path) -> Restored | None:
    """Put the data saved at `path` into the resources of the same names; None if no file.

    Call it under the emulator's lock, after the stacks are created and before anything
    writes data. A key, table or log stream that holds data already keeps it, and the saved
    data of it is reported as not placed, as is data whose resource does not exist; a
    queue's saved messages go before those it has.
    """
    if not path.exists():
        return None
    header, payload = read_header(path)
    try:
        data = pickle.loads(payload)
    except Exception as e:  # unpickling runs moto's code: anything can come out of it
        raise SnapshotError(f"{path} is damaged ({type(e).__name__}: {e})") from e
    result = Restored(path=str(path), saved_at=float(header["saved_at"]))
    s3, dynamodb, logs, sqs = _backends()
    _restore_s3(s3, data["s3"], result)
    _restore_dynamodb(dynamodb, data["dynamodb"], result)
    _restore_logs(logs, data["logs"], result)
    _restore_sqs(sqs, data["sqs"], result)
    if result.unplaced:  # the next snapshot drops them: keep this one aside
        kept = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, kept)
        result.unplaced.append(f"(the snapshot is kept as {kept})")
    return result


def _restore_s3(s3: Any, saved: dict[str, dict[str, list[Any]]], result: Restored) -> None:
    for name, keys in saved.items():
        bucket = s3.buckets.get(name)
        if bucket is None:
            if keys:
                result.unplaced.append(f"s3://{name} ({_many(len(keys), 'key')})")
            continue
        for key, versions in keys.items():
            if bucket.keys.getlist(key):
                result.unplaced.append(f"s3://{name}/{key} (exists)")
                continue
            bucket.keys.setlist(key, versions)
            result.objects += len(versions)


def _restore_dynamodb(dynamodb: Any, saved: dict[str, dict[str, Any]], result: Restored) -> None:
    for name, table_data in saved.items():
        count = _item_count(table_data)
        table = dynamodb.tables.get(name)
        if count == 0:
            continue
        if table is None or [table.hash_key_attr, table.range_key_attr] != table_data["key"]:
            why = "no such table" if table is None else "its key schema changed"
            result.unplaced.append(f"table {name} ({_many(count, 'item')}, {why})")
            continue
        if table.items:
            result.unplaced.append(f"table {name} ({_many(count, 'item')}; it has items already)")
            continue
        table.items = table_data["items"]
        result.items += count


def _restore_logs(logs: Any, saved: dict[str, dict[str, Any]], result: Restored) -> None:
    from moto.logs.models import LogEvent, LogStream

    last_event_id = -1
    for name, streams in saved.items():
        group = logs.groups.get(name)
        if group is None:
            if streams:
                result.unplaced.append(f"log group {name} ({_many(len(streams), 'stream')})")
            continue
        for stream_name, state in streams.items():
            if stream_name in group.streams:
                result.unplaced.append(f"log stream {name}:{stream_name} (exists)")
                continue
            stream = LogStream.__new__(LogStream)
            stream.__dict__.update(state, log_group=group)
            group.streams[stream_name] = stream
            events = state["events"]
            result.log_events += len(events)
            last_event_id = max([last_event_id, *(e.event_id for e in events)])
    # Event ids come from a class-wide counter: new events must not reuse restored ids.
    LogEvent._event_id = max(LogEvent._event_id, last_event_id + 1)


def _restore_sqs(sqs: Any, saved: dict[str, dict[str, Any]], result: Restored) -> None:
    for name, queue_data in saved.items():
        messages = queue_data["messages"]
        queue = sqs.queues.get(name)
        if not messages:
            continue
        if queue is None:
            result.unplaced.append(f"queue {name} ({_many(len(messages), 'message')})")
            continue
        # Before any the new queue holds already (S3's test event when notifications were set).
        queue._messages = messages + queue._messages
        queue._pending_messages |= {m for m in messages if not m.visible}
        queue.deleted_messages.update(queue_data["deleted"])
        result.messages += len(messages)


class Saver:
    """Snapshots of the emulator's data into `state_dir`, taken under the request `lock`.

    A snapshot is written by a forked child: the fork, under the lock, is the point-in-time
    copy (the kernel copies pages only as either side changes them), and the child pickles
    and writes it while the emulator serves on. The lock is held for the fork only.
    """

    def __init__(
        self, state_dir: Path, lock: threading.Lock, period_s: float = SNAPSHOT_PERIOD_S
    ) -> None:
        self.path = state_dir / SNAPSHOT_FILE
        self.lock = lock
        self.period_s = period_s
        self.dirty = False
        self.saving = False  # true once restore has run
        self._one_at_a_time = threading.Lock()
        self._stopped = threading.Event()
        # moto moves objects over 5 MB to temporary files, whose file offset a forked child
        # would share with the emulator; kept in memory, a child's reads cannot disturb it.
        os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(2**40)

    def changed(self) -> None:
        """A request may have changed data."""
        self.dirty = True

    def restore(self) -> Restored | None:
        """Put the saved data back (see `restore`), then start saving; SnapshotError if the
        snapshot is damaged (and then nothing is ever saved over it)."""
        with self.lock:
            if self.saving:
                raise SnapshotError("the data was restored already; the emulator is saving it")
            for stale in self.path.parent.glob(f"{self.path.name}.*.tmp"):
                stale.unlink()  # a snapshot that was being written when its emulator died
            result = restore(self.path)
            self.saving, self.dirty = True, False
        threading.Thread(target=self._run, name="snapshots", daemon=True).start()
        return result

    def save(self, timeout_s: float = 120.0) -> float:
        """Take a snapshot now and wait until it is on disk; the seconds the lock was held."""
        with self._one_at_a_time:
            parent = os.getpid()
            with self.lock:
                began = time.perf_counter()
                self.dirty = False
                data = capture()  # here, not in the child: moto's own locks are free now
                saved_at = time.time()
                child = os.fork()
                if child == 0:
                    _write_snapshot_and_exit(self.path, data, saved_at, parent)
                held = time.perf_counter() - began
            if not _wait(child, timeout_s):
                self.dirty = True  # try again at the next period
                print(f"could not save the data to {self.path}", file=sys.stderr, flush=True)
            return held

    def close(self) -> None:
        """Stop taking snapshots; take a last one if anything changed since the previous."""
        self._stopped.set()
        if self.saving and self.dirty:
            held = self.save()
            print(f"saved the data to {self.path} (lock held {held * 1000:.1f} ms)", flush=True)

    def _run(self) -> None:
        while not self._stopped.wait(self.period_s):
            if self.dirty:
                try:
                    self.save()
                except Exception as e:  # e.g. no memory to fork: try again next period
                    self.dirty = True
                    print(f"could not save the data: {e}", file=sys.stderr, flush=True)


def _write_snapshot_and_exit(
    path: Path, data: dict[str, Any], saved_at: float, parent: int
) -> NoReturn:
    """In the forked child: pickle and write `data`, then exit without any clean-up (the
    parent's threads, sockets and buffers are the parent's)."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The emulator's sockets: were it killed, its port and connections must die with it.
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        header, payload = dump(data, saved_at)
        # If the emulator died meanwhile, a new one may be saving already: leave it alone.
        write(path, header, payload, keep=lambda: os.getppid() == parent)
    except BaseException as e:  # nothing may escape into the parent's code
        os.write(2, f"snapshot failed: {type(e).__name__}: {e}\n".encode())
        code = 1
    os._exit(code)


def _wait(child: int, timeout_s: float) -> bool:
    """Did the child write its snapshot within `timeout_s`? (Killed if it did not finish.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status) == 0
        if time.monotonic() > deadline:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return False
        time.sleep(0.01)
