"""DynamoDB's limits and the storage faults of `--faults`, acted out by the emulator.

Two things AWS does that moto does not:

Limits (for every caller). DynamoDB refuses requests over its quotas
(https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html and
the BatchWriteItem / TransactWriteItems API references). moto 5.2.5 already refuses a
partition key over 2048 bytes and a sort key over 1024 bytes on writes, more than 100 keys
in a BatchGetItem (and answers over 16 MB with `UnprocessedKeys`), more than 100 actions in
a TransactWriteItems, and pages Query and Scan at about 1 MB. `install()` adds, by small
patches on moto's DynamoDB request handler:
- BatchWriteItem: 1 to 25 requests per table and 25 in all; no two requests on one item
  (moto compared whole requests: it missed a put and a delete of one key, and two puts of
  one key whose other attributes differ, and refused one item put into two tables);
- PutItem and BatchWriteItem: an item is at most 400 KB measured as AWS measures it
  (names and values, numbers by significant digits, binary by raw bytes, 3 bytes per list
  or map and 1 per element; moto counts neither the list and map overhead nor numbers
  right, and refuses at 405,000 of its own bytes, which stays in force as well);
- TransactWriteItems: at most 100 actions (in AWS's wording) and 4 MB of items; and the
  `ClientRequestToken` makes a repeated call within 10 minutes a no-op that answers
  success, as AWS documents (moto ignored it, so a retried transaction ran twice);
- TransactGetItems: 100 items, not moto's former 25.
Not enforced: BatchWriteItem's 16 MB per request (25 items of at most 400 KB cannot reach
it) and S3's 5 GB per PutObject (nothing here comes near).

Faults (only for requests that Lambda functions make: botocore's user agent carries
`exec-env/AWS_Lambda_...`; the command line's and the runtime's own requests pass untouched):
- `ambiguous=p`: a DynamoDB write (PutItem, UpdateItem, DeleteItem, BatchWriteItem,
  TransactWriteItems) or an S3 PutObject, CopyObject or CompleteMultipartUpload that moto
  applied is answered, with probability p, by a 500 (DynamoDB's `InternalServerError`,
  S3's `InternalError`) or, for a quarter of them, by dropping the connection, as when a
  response is lost in a timeout. botocore retries both; a retried conditional write then
  fails its condition, as it does on AWS.
- `unprocessed=p`: with probability p a BatchWriteItem leaves a random non-empty part of its
  requests (sometimes all) unprocessed and answers them in `UnprocessedItems`; the rest is
  written. The requests left out are not validated until they are sent again.
Choices come from the plan's seed. `GET /_itsacat/faults` returns what was injected.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import random
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs

from embedded.emulator import call_wsgi
from embedded.faults import FaultPlan

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

FAULTS_PATH = "/_itsacat/faults"
DROPPED_SHARE = 0.25  # of the ambiguous faults, those acted out as a dropped connection

# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html
# ("All size measurements in DynamoDB use binary-based units": 1 KB = 1024 bytes.)
MAX_ITEM_BYTES = 400 * 1024
BATCH_WRITE_MAX_REQUESTS = 25
TRANSACT_WRITE_MAX_ACTIONS = 100
TRANSACT_WRITE_MAX_BYTES = 4 * 1024 * 1024
TRANSACT_GET_MAX_ITEMS = 100
# https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
# ("A client request token is valid for 10 minutes after the first request that uses it")
CLIENT_TOKEN_WINDOW_S = 600.0

_DYNAMODB_WRITES = {
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
}
_DYNAMODB_PREFIX = "DynamoDB_20120810."
_ERROR_PREFIX = "com.amazonaws.dynamodb.v20120810#"
_ITEM_TOO_LARGE = "Item size has exceeded the maximum allowed size"


# --- what AWS counts -------------------------------------------------------------------


def _raw_length(value: Any) -> int:
    """Bytes of a binary value: moto hands them over decoded, the wire has base64."""
    if isinstance(value, bytes | bytearray):
        return len(value)
    return len(base64.b64decode(value))


def _number_size(text: str) -> int:
    """1 byte per two significant digits, plus 1 (leading and trailing zeros trimmed)."""
    mantissa = str(text).strip().lstrip("+-").lower().split("e", 1)[0]
    digits = mantissa.replace(".", "").strip("0")
    return (len(digits) + 1) // 2 + 1


def value_size(value: dict[str, Any]) -> int:
    """The size of one attribute value, as DynamoDB counts it (attribute name excluded):
    https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html
    """
    (kind, v), *_ = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return _raw_length(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(s.encode()) for s in v)
    if kind == "NS":
        return sum(_number_size(n) for n in v)
    if kind == "BS":
        return sum(_raw_length(b) for b in v)
    if kind == "L":  # 3 bytes for the list, 1 per element
        return 3 + sum(1 + value_size(e) for e in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + value_size(e) for k, e in v.items())
    return len(json.dumps(v, default=str).encode())  # not a type DynamoDB has


def item_size(item: dict[str, Any]) -> int:
    """The size of an item: its attribute names and values, as DynamoDB counts them."""
    return sum(len(name.encode()) + value_size(value) for name, value in item.items())


# --- DynamoDB's refusals ---------------------------------------------------------------


def _validation(message: str) -> Exception:
    from moto.dynamodb.exceptions import MockValidationException

    return MockValidationException(message)


def _echo(kind: str, requests: list[Any]) -> str:
    """A request list as DynamoDB echoed it in validation errors: Java object names
    (e.g. boto3 issue 483). Today's DynamoDB prints every field of every request instead
    (`WriteRequest(putRequest=PutRequest(item={pk=AttributeValue(s=...`); callers should
    match the constraint at the end of the message, which has not changed."""
    names = []
    for request in requests:
        digest = zlib.crc32(json.dumps(request, sort_keys=True, default=str).encode())
        names.append(f"com.amazonaws.dynamodb.v20120810.{kind}@{digest:08x}")
    return ", ".join(names)


def _key_of(value: dict[str, Any]) -> str:
    """A key attribute value in a canonical form (1 and 1.0 are the same number)."""
    (kind, v), *_ = value.items()
    if kind == "N":
        try:
            return f"N:{Decimal(v).normalize()}"
        except InvalidOperation:
            return f"N:{v}"
    if kind == "B":
        raw = v if isinstance(v, bytes | bytearray) else base64.b64decode(v)
        return f"B:{bytes(raw).hex()}"
    return f"{kind}:{v}"


def check_batch_write(request_items: dict[str, list[Any]], get_table: Callable[[str], Any]) -> None:
    """Refuse a BatchWriteItem over DynamoDB's limits, as DynamoDB does:
    https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html
    (25 requests, no two on one item, items of 400 KB at most). `get_table`: moto's."""
    for table, requests in request_items.items():
        if not 1 <= len(requests) <= BATCH_WRITE_MAX_REQUESTS:
            echo = _echo("WriteRequest", requests)
            raise _validation(
                f"1 validation error detected: Value '{{{table}=[{echo}]}}' "
                "at 'requestItems' failed to satisfy constraint: Map value must satisfy "
                "constraint: [Member must have length less than or equal to 25, "
                "Member must have length greater than or equal to 1]"
            )
    if sum(len(requests) for requests in request_items.values()) > BATCH_WRITE_MAX_REQUESTS:
        raise _validation("Too many items requested for the BatchWriteItem call")
    seen: set[tuple[str, ...]] = set()
    for table_name, requests in request_items.items():
        table = get_table(table_name)  # ResourceNotFoundException for a missing table
        names = [table.hash_key_attr, *([table.range_key_attr] if table.range_key_attr else [])]
        for request in requests:
            put = request.get("PutRequest")
            attributes = put["Item"] if put else (request.get("DeleteRequest") or {}).get("Key")
            if not attributes:
                continue  # malformed: moto refuses it
            if put and item_size(put["Item"]) > MAX_ITEM_BYTES:
                raise _validation(_ITEM_TOO_LARGE)
            if not all(name in attributes for name in names):
                continue  # moto refuses a key without the table's key attributes
            key = (table_name, *(_key_of(attributes[name]) for name in names))
            if key in seen:
                raise _validation("Provided list of item keys contains duplicates")
            seen.add(key)


def check_put_item(item: dict[str, Any]) -> None:
    if item_size(item) > MAX_ITEM_BYTES:
        raise _validation(_ITEM_TOO_LARGE)


def check_transact_write(transact_items: list[dict[str, Any]]) -> None:
    """At most 100 actions and 4 MB of items:
    https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html
    (an Update, Delete or ConditionCheck is counted by its key: the item it changes is not
    known before it runs)."""
    if len(transact_items) > TRANSACT_WRITE_MAX_ACTIONS:
        raise _validation(
            f"1 validation error detected: Value '[{_echo('TransactWriteItem', transact_items)}]' "
            "at 'transactItems' failed to satisfy constraint: Member must have length less "
            "than or equal to 100"
        )
    total = 0
    for action in transact_items:
        for body in action.values():
            if isinstance(body, dict):
                total += item_size(body.get("Item") or body.get("Key") or {})
    if total > TRANSACT_WRITE_MAX_BYTES:
        # The docs give the limit, not the message; this is the wording reported for it.
        raise _validation("Transaction request cannot be larger than 4 MB")


class ClientTokens:
    """TransactWriteItems' idempotency: a successful call's token, for 10 minutes, answers
    the same call again without running it; with other parameters it is refused."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: dict[str, tuple[str, float, Any]] = {}  # token: (parameters, until, result)

    @staticmethod
    def _parameters(body: dict[str, Any]) -> str:
        rest = {k: v for k, v in body.items() if k != "ClientRequestToken"}
        return hashlib.sha256(
            json.dumps(rest, sort_keys=True, default=_jsonable).encode()
        ).hexdigest()

    def replay(self, body: dict[str, Any]) -> Any | None:
        """The result to answer again, None to run the call; raises on a mismatch."""
        token = body.get("ClientRequestToken")
        if not token:
            return None
        now = time.monotonic()
        with self.lock:
            for old in [t for t, (_, until, _) in self.done.items() if until < now]:
                del self.done[old]
            hit = self.done.get(token)
        if hit is None:
            return None
        if hit[0] != self._parameters(body):
            from moto.dynamodb.exceptions import DynamodbException

            raise DynamodbException(_ERROR_PREFIX + "IdempotentParameterMismatchException", "")
        return hit[2]

    def record(self, body: dict[str, Any], result: Any) -> None:
        token = body.get("ClientRequestToken")
        if token:
            with self.lock:
                until = time.monotonic() + CLIENT_TOKEN_WINDOW_S
                self.done[token] = (self._parameters(body), until, result)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return str(value)


_TOKENS = ClientTokens()
# The faults of the request that moto's handler is serving on this thread, if any.
_CURRENT = threading.local()


def install() -> None:
    """Patch moto's DynamoDB handler with the limits above and the `unprocessed` fault
    (idempotent)."""
    import moto.dynamodb.responses as responses

    handler = responses.DynamoHandler
    if getattr(handler, "_itsacat_limits", False):
        return
    responses.TRANSACTION_MAX_ITEMS = TRANSACT_GET_MAX_ITEMS  # TransactGetItems' limit
    batch_write_item = handler.batch_write_item
    put_item = handler.put_item
    transact_write_items = handler.transact_write_items

    def checked_batch_write_item(self: Any) -> Any:
        request_items = self.body.get("RequestItems") or {}
        check_batch_write(request_items, self.dynamodb_backend.get_table)
        # Checked above by key and table; moto's own check compares whole requests across
        # tables, and so refuses one item put into two tables.
        self._contains_duplicates = lambda keys: False
        faults = getattr(_CURRENT, "faults", None)
        if faults is None:
            return batch_write_item(self)
        return faults.batch_write(self, request_items, batch_write_item)

    def checked_put_item(self: Any) -> Any:
        check_put_item(self.body.get("Item") or {})
        return put_item(self)

    def checked_transact_write_items(self: Any) -> Any:
        check_transact_write(self.body.get("TransactItems") or [])
        replayed = _TOKENS.replay(self.body)
        if replayed is not None:
            return replayed
        result = transact_write_items(self)
        _TOKENS.record(self.body, result)
        return result

    handler.batch_write_item = checked_batch_write_item  # type: ignore[method-assign]
    handler.put_item = checked_put_item  # type: ignore[method-assign]
    handler.transact_write_items = checked_transact_write_items  # type: ignore[method-assign]
    handler._itsacat_limits = True  # type: ignore[attr-defined]


# --- the faults --------------------------------------------------------------------------


class FaultCounts:
    """What was injected, by `service:Operation`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ambiguous: dict[str, int] = {}
        self.dropped = 0
        self.unprocessed: dict[str, int] = {}
        self.unprocessed_items = 0

    def add_ambiguous(self, name: str, dropped: bool) -> None:
        with self.lock:
            self.ambiguous[name] = self.ambiguous.get(name, 0) + 1
            self.dropped += dropped

    def add_unprocessed(self, name: str, items: int) -> None:
        with self.lock:
            self.unprocessed[name] = self.unprocessed.get(name, 0) + 1
            self.unprocessed_items += items

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ambiguous": dict(self.ambiguous),
                "ambiguous_dropped": self.dropped,
                "unprocessed": dict(self.unprocessed),
                "unprocessed_items": self.unprocessed_items,
            }


def _s3_write(environ: dict[str, Any]) -> str | None:
    """The S3 object write a request is, if any (path-style addressing, as the stack uses)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if "/s3/aws4_request" not in auth:
        return None
    path = environ.get("PATH_INFO", "/").lstrip("/")
    if "/" not in path.rstrip("/"):
        return None  # a bucket, not an object
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = environ.get("REQUEST_METHOD")
    if method == "PUT" and not set(query) - {"x-id"}:
        return "CopyObject" if environ.get("HTTP_X_AMZ_COPY_SOURCE") else "PutObject"
    if method == "POST" and "uploadId" in query:
        return "CompleteMultipartUpload"
    return None


def _dynamodb_500() -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps(
        {"__type": _ERROR_PREFIX + "InternalServerError", "message": "Internal server error"}
    ).encode()
    headers = [
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-RequestId", uuid.uuid4().hex.upper()),
        ("x-amz-crc32", str(zlib.crc32(body))),
        ("Content-Length", str(len(body))),
    ]
    return "500 Internal Server Error", headers, body


def _s3_500() -> tuple[str, list[tuple[str, str]], bytes]:
    request_id = uuid.uuid4().hex[:16].upper()
    host_id = base64.b64encode(uuid.uuid4().bytes * 2).decode()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
        "<Message>We encountered an internal error. Please try again.</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>{host_id}</HostId></Error>"
    ).encode()
    headers = [
        ("Content-Type", "application/xml"),
        ("x-amz-request-id", request_id),
        ("x-amz-id-2", host_id),
        ("Content-Length", str(len(body))),
    ]
    return "500 Internal Server Error", headers, body


class StorageFaults:
    """WSGI middleware in front of moto: acts out `ambiguous` on the functions' writes and
    hands `unprocessed` to the patched BatchWriteItem handler; serves `GET /_itsacat/faults`.
    Runs under the emulator's lock (it sits inside `SerialisedApp`)."""

    def __init__(self, app: WSGIApp, plan: FaultPlan, dropped_share: float = DROPPED_SHARE) -> None:
        self.app = app
        self.plan = plan
        self.dropped_share = dropped_share
        self.counts = FaultCounts()
        # Our own stream from the plan's seed: the plan's is shared with `chance`.
        self.random = random.Random(None if plan.seed is None else f"storage:{plan.seed}")
        self.lock = threading.Lock()
        install()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == FAULTS_PATH and environ.get("REQUEST_METHOD") == "GET":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(self.counts.snapshot()).encode()]
        if "exec-env/AWS_Lambda" not in environ.get("HTTP_USER_AGENT", ""):
            return self.app(environ, start_response)
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith(_DYNAMODB_PREFIX):
            op = target[len(_DYNAMODB_PREFIX) :]
            if op == "BatchWriteItem" and self.plan.probabilities.get("unprocessed"):
                return self._with_unprocessed(environ, start_response)
            name = f"dynamodb:{op}" if op in _DYNAMODB_WRITES else None
        else:
            s3_op = _s3_write(environ)
            name = f"s3:{s3_op}" if s3_op else None
        if name is None:
            return self.app(environ, start_response)
        return self._ambiguous(environ, start_response, name)

    def _ambiguous(
        self, environ: dict[str, Any], start_response: StartResponse, name: str
    ) -> Iterable[bytes]:
        """Forward the write; if moto applied it, maybe answer a 500 or drop the line."""
        if not self.plan.probabilities.get("ambiguous"):
            return self.app(environ, start_response)
        status, headers, body = call_wsgi(self.app, environ)
        if status.startswith("200") and self.plan.chance("ambiguous"):
            with self.lock:
                dropped = self.random.random() < self.dropped_share
            self.counts.add_ambiguous(name, dropped)
            if dropped and _drop(environ):
                status, headers, body = "500 Internal Server Error", [], b""  # never sent
            else:
                status, headers, body = _dynamodb_500() if name[0] == "d" else _s3_500()
        start_response(status, headers)
        return [body]

    def _with_unprocessed(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        _CURRENT.faults = self  # for the patched handler (moto runs on this thread)
        try:
            return self._ambiguous(environ, start_response, "dynamodb:BatchWriteItem")
        finally:
            _CURRENT.faults = None

    def defer(self, count: int) -> set[int]:
        """Which of `count` write requests to leave unprocessed (none most times)."""
        if count == 0 or not self.plan.chance("unprocessed"):
            return set()
        with self.lock:
            return set(self.random.sample(range(count), self.random.randint(1, count)))

    def batch_write(self, handler: Any, request_items: dict[str, list[Any]], run: Any) -> Any:
        """Run moto's BatchWriteItem (`run`) on part of the requests, if the plan says so,
        and answer the rest as `UnprocessedItems`."""
        flat = [(table, r) for table, requests in request_items.items() for r in requests]
        deferred = self.defer(len(flat))
        if not deferred:
            return run(handler)
        processed: dict[str, list[Any]] = {}
        unprocessed: dict[str, list[Any]] = {}
        for i, (table, request) in enumerate(flat):
            (unprocessed if i in deferred else processed).setdefault(table, []).append(request)
        self.counts.add_unprocessed("dynamodb:BatchWriteItem", len(deferred))
        if not processed:
            from moto.core.responses import ActionResult

            return ActionResult({"UnprocessedItems": unprocessed})
        body = handler.body
        handler.body = {**body, "RequestItems": processed}
        try:
            result = run(handler)
        finally:
            handler.body = body
        answer = getattr(result, "result", None)
        if isinstance(answer, dict):
            merged = answer.get("UnprocessedItems") or {}
            for table, requests in unprocessed.items():
                merged.setdefault(table, []).extend(requests)
            answer["UnprocessedItems"] = merged
        return result


def _drop(environ: dict[str, Any]) -> bool:
    """Close the client's connection without an answer (werkzeug's server only)."""
    connection = environ.get("werkzeug.socket")
    if connection is None:
        return False
    with contextlib.suppress(OSError):  # already gone
        connection.shutdown(socket.SHUT_RDWR)
    return True
