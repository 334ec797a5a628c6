"""IAM for the emulator: what a Lambda function's role allows, on the real action and resource.

On AWS a function runs with its execution role's credentials, and a least-privilege role
(the template's roles name each table, queue, topic, log group and key prefix) is only
proven by a request that AWS refuses. moto has the pieces (STS sessions, IAM policies and
an evaluator, `moto.iam.access_control.IAMPolicy`) but its switch authenticates every key,
rejecting the account owner's "testing" key, and evaluates everything outside S3 on
resource "*", so a policy that names a table ARN denies every call to it.

This module replaces moto's per-request check (`ActionAuthenticatorMixin.
_authenticate_and_authorize_action`, installed by `install()`):
- requests signed with any key that is not an assumed-role key of moto's STS are the account
  owner's and are not checked at all (a prefix test on the key moto already extracted);
- for an assumed-role key, the session token must match, then every (action, resource)
  the request needs, computed from the request as AWS does (`_requested`), is evaluated
  with moto's evaluator against the role's inline and attached policies, its permissions
  boundary and the session policy; the first one refused fails the request with
  `AccessDenied` in the service's own error shape and AWS's wording.

`authorize()` answers the same question for a given action and resource; the emulator serves
it as `POST /_itsacat/authorize` for the local Lambda runtime, which checks Invoke itself.

Not evaluated (moto's evaluator has no request context): condition keys (a statement with
a Condition never applies, as on AWS when the request's context lacks the key), NotResource, policy
variables, resource-based policies (bucket/queue/topic/function policies), session tags,
credential expiry and request signatures. Calls run under the emulator's lock, which also
guards the caches here.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

AUTHORIZE_PATH = "/_itsacat/authorize"
_ASSUMED_ROLE_KEY_PREFIX = "ASIA"  # moto's STS issues these (iam create_temp_access_key)
_MAX_CACHED_DECISIONS = 4096
_INVALID_TOKEN = "The security token included in the request is invalid."
# Credential-scope names that differ from the IAM service prefix.
_IAM_PREFIX = {"monitoring": "cloudwatch", "email": "ses"}
_QUERY_NAMESPACE = {
    "sns": "http://sns.amazonaws.com/doc/2010-03-31/",
    "sqs": "http://queue.amazonaws.com/doc/2012-11-05/",
    "sts": "https://sts.amazonaws.com/doc/2011-06-15/",
    "iam": "https://iam.amazonaws.com/doc/2010-05-08/",
}
# Operations authorised as another IAM action.
_ACTION_ALIASES = {
    # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sns:PublishBatch": "sns:Publish",
    "lambda:Invoke": "lambda:InvokeFunction",
    "lambda:InvokeWithResponseStream": "lambda:InvokeFunction",
    "s3:HeadBucket": "s3:ListBucket",
}
# DynamoDB transactions are authorised item by item, as the underlying single-item actions
# (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis-iam.html).
_TRANSACT_ACTIONS = {
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Put": "dynamodb:PutItem",
    "Delete": "dynamodb:DeleteItem",
    "Update": "dynamodb:UpdateItem",
    "Get": "dynamodb:GetItem",
}
# CloudWatch Logs evaluates stream operations on the stream and group operations on
# `log-group:NAME:log-stream:` (an empty stream), as AWS's own denials name them, e.g.
# "logs:CreateLogStream on resource: ...:log-group:/aws/lambda/F:log-stream:2019/12/16/[$LATEST]9f"
# (github.com/aws-solutions/aws-crr-monitor/issues/8) and "logs:CreateLogGroup on resource:
# ...:log-group:/aws/eks/X/cluster:log-stream:"; DescribeLogGroups names `log-group::log-stream:`.
# Resource types: https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazoncloudwatchlogs.html
_LOG_STREAM_OPERATIONS = {"CreateLogStream", "PutLogEvents", "GetLogEvents", "DeleteLogStream"}


@dataclass(frozen=True)
class Decision:
    """The answer for one request: allowed, or the error code and AWS's message."""

    allowed: bool
    principal: str | None  # the assumed-role session's ARN; None for the account owner
    message: str | None = None
    code: str | None = None  # AccessDeniedException, or UnrecognizedClientException

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"allowed": self.allowed, "principal": self.principal}
        if not self.allowed:
            out["message"] = self.message
            out["code"] = self.code
        return out


def authorize(
    access_key_id: str, session_token: str | None, action: str, resource: str
) -> Decision:
    """Whether these credentials may perform `action` (e.g. "lambda:InvokeFunction") on
    `resource` (an ARN or "*"). Keys that are not assumed-role keys of moto's STS are the
    account owner's: allowed. In a running emulator, call it under the emulator's lock."""
    if not access_key_id.startswith(_ASSUMED_ROLE_KEY_PREFIX):
        return Decision(True, None)
    session = _AUTHORIZER.session(access_key_id, None, "aws")
    if session is None:
        return Decision(True, None)
    principal: str = session.arn
    if session_token != session.session_token:
        return Decision(False, principal, _INVALID_TOKEN, "UnrecognizedClientException")
    refused = _AUTHORIZER.first_refused(session, [(action, resource)])
    if refused is None:
        return Decision(True, principal)
    return Decision(False, principal, denial_message(principal, *refused), "AccessDeniedException")


def answer(raw: bytes) -> tuple[int, dict[str, Any]]:
    """The authorize endpoint: request body -> (HTTP status, JSON answer)."""
    try:
        request = json.loads(raw or b"{}")
        key, action, resource = (request["access_key_id"], request["action"], request["resource"])
        token = request.get("session_token")
        if not all(isinstance(v, str) for v in (key, action, resource)) or not (
            token is None or isinstance(token, str)
        ):
            raise TypeError("fields must be strings")
    except (ValueError, KeyError, TypeError) as e:
        fields = "access_key_id, session_token, action, resource"
        return 400, {"error": f"expected a JSON object with {fields}: {e!r}"}
    return 200, authorize(key, token, action, resource).to_json()


def request_authorization(
    emulator_url: str,
    access_key_id: str,
    session_token: str | None,
    action: str,
    resource: str,
    timeout: float = 5.0,
) -> dict[str, Any]:
    """Client side of `POST /_itsacat/authorize`: the endpoint's JSON answer."""
    body = json.dumps(
        {
            "access_key_id": access_key_id,
            "session_token": session_token,
            "action": action,
            "resource": resource,
        }
    ).encode()
    request = urllib.request.Request(
        emulator_url.rstrip("/") + AUTHORIZE_PATH,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def denial_message(principal: str, action: str, resource: str, reason: str) -> str:
    """AWS's wording, with each service's quirks: SQS lowercases the action, SNS writes
    "SNS:", S3 quotes the resource; actions without a resource type name none."""
    service, _, name = action.partition(":")
    if service == "sqs":
        action = action.lower()
    elif service == "sns":
        action = f"SNS:{name}"
    where = ""
    if resource != "*":
        where = f' on resource: "{resource}"' if service == "s3" else f" on resource: {resource}"
    return f"User: {principal} is not authorized to perform: {action}{where} " + reason.format(
        action=action
    )


# ------------------------------------------------------------------------ the evaluation


@dataclass
class _PolicySet:
    """A role's policies parsed once (moto's `IAMPolicy`), with the decisions made so far."""

    fingerprint: tuple[Any, ...]
    identity: list[Any]
    boundary: Any | None
    session: Any | None
    decisions: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def refusal(self, action: str, resource: str) -> str | None:
        """None if allowed, else the reason, worded as AWS does (`{action}` to fill in)."""
        from moto.iam.access_control import PermissionResult

        def combined(policies: list[Any]) -> Any:
            permitted = False
            for policy in policies:
                result = policy.is_action_permitted(action, resource)
                if result == PermissionResult.DENIED:
                    return result
                permitted = permitted or result == PermissionResult.PERMITTED
            return PermissionResult.PERMITTED if permitted else PermissionResult.NEUTRAL

        layers = [("an identity-based policy", "identity-based policy", self.identity)]
        if self.boundary is not None:
            layers.append(("a permissions boundary", "permissions boundary", [self.boundary]))
        if self.session is not None:
            layers.append(("a session policy", "session policy", [self.session]))
        results = [(combined(policies), a, kind) for a, kind, policies in layers]
        for result, a, _ in results:
            if result == PermissionResult.DENIED:
                return f"with an explicit deny in {a}"
        for result, _, kind in results:
            if result != PermissionResult.PERMITTED:
                return f"because no {kind} allows the {{action}} action"
        return None


class _Authorizer:
    """Sessions by access key, and the policy sets of roles, rebuilt when a role changes."""

    # moto's backend dicts are slow to index (a lock, a list of keys): cache hits are
    # checked against the backend object itself. A moto reset re-initialises backends in
    # place, replacing `assumed_roles` and `roles`, which invalidates the hits.
    def __init__(self) -> None:
        self._sessions: dict[str, tuple[Any, Any, list[Any]]] = {}  # key -> (session, STS, list)
        self._indexed: dict[tuple[str, str], tuple[Any, list[Any], int]] = {}
        self._roles: dict[str, tuple[Any, Any]] = {}  # role ARN -> (Role, IAM backend)
        self._policy_sets: dict[tuple[str, str | None], _PolicySet] = {}

    def session(self, access_key_id: str, account: str | None, partition: str) -> Any | None:
        """The moto `AssumedRole` this key belongs to, or None (not an assumed-role key).
        `account`: the request's, if known (moto derives it from the key)."""
        hit = self._sessions.get(access_key_id)
        if hit is not None and hit[1].assumed_roles is hit[2]:
            return hit[0]
        from moto.iam.models import get_account_id_from
        from moto.sts.models import sts_backends

        account = account or get_account_id_from(access_key_id)
        backend = sts_backends[account][partition]
        roles = backend.assumed_roles
        indexed = self._indexed.get((account, partition))
        if (
            indexed is None
            or indexed[0] is not backend
            or indexed[1] is not roles
            or (indexed[2] != len(roles))
        ):
            for assumed in roles:
                self._sessions[assumed.access_key_id] = (assumed, backend, roles)
            self._indexed[(account, partition)] = (backend, roles, len(roles))
            hit = self._sessions.get(access_key_id)
            if hit is not None and hit[1].assumed_roles is hit[2]:
                return hit[0]
        return None

    def first_refused(
        self, session: Any, requested: list[tuple[str, str]]
    ) -> tuple[str, str, str] | None:
        """The first (action, resource, reason) refused to this session, or None."""
        if not requested:
            return None
        policies = self._policy_set(session)
        for action, resource in requested:
            key = (action, resource)
            if key in policies.decisions:
                reason = policies.decisions[key]
            else:
                if len(policies.decisions) >= _MAX_CACHED_DECISIONS:
                    policies.decisions.clear()
                reason = policies.decisions[key] = policies.refusal(action, resource)
            if reason is not None:
                return action, resource, reason
        return None

    def _role(self, role_arn: str) -> tuple[Any, Any] | None:
        """(moto Role, its IAM backend) for the session's role ARN, or None if deleted."""
        hit = self._roles.get(role_arn)
        if hit is not None and hit[1].roles.get(hit[0].id) is hit[0]:
            return hit
        from moto.iam.models import iam_backends

        parts = role_arn.split(":")
        if len(parts) < 6:
            return None
        backend = iam_backends[parts[4]][parts[1]]
        name = role_arn.rsplit("/", 1)[-1]
        for candidate in backend.roles.values():
            if candidate.arn == role_arn or candidate.name == name:
                self._roles[role_arn] = (candidate, backend)
                return candidate, backend
        return None

    def _policy_set(self, session: Any) -> _PolicySet:
        found = self._role(session.role_arn)
        role, boundary = None, None
        if found is None:
            fingerprint: tuple[Any, ...] = (None,)
        else:
            role, backend = found
            if role.permissions_boundary_arn:
                boundary = backend.managed_policies.get(role.permissions_boundary_arn)
            # Managed policies by identity and default version: a new default version or a
            # policy deleted and recreated under the same ARN is a new fingerprint.
            fingerprint = (
                tuple(role.policies.items()),
                tuple((p, p.default_version_id) for p in role.managed_policies.values()),
                (boundary, boundary.default_version_id) if boundary is not None else None,
            )
        key = (role.id if role is not None else session.role_arn, session.policy or None)
        cached = self._policy_sets.get(key)
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
        from moto.iam.access_control import IAMPolicy

        identity = []
        if role is not None:
            # Roles created by CloudFormation keep their inline documents as dicts.
            identity = [
                IAMPolicy(doc if isinstance(doc, str) else json.dumps(doc))
                for doc in role.policies.values()
            ]
            identity += [IAMPolicy(p) for p in role.managed_policies.values()]
        created = _PolicySet(
            fingerprint,
            identity,
            IAMPolicy(boundary) if boundary is not None else None,
            IAMPolicy(session.policy) if session.policy else None,
        )
        self._policy_sets[key] = created
        return created


_AUTHORIZER = _Authorizer()


# ------------------------------------------------------------- what a request asks for


def _params(response: Any) -> Mapping[str, Any]:
    """The request's parameters, parsed once: moto's own parse when it made one."""
    params = getattr(response, "params", None)
    if isinstance(params, Mapping):
        return params
    cached = getattr(response, "_itsacat_params", None)
    if cached is not None:
        return cached
    parsed: Mapping[str, Any] = {}
    body = response.body
    if isinstance(body, Mapping):
        parsed = body
    elif body and not isinstance(body, bytes) and body.lstrip().startswith("{"):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
    if not isinstance(parsed, Mapping) or not parsed:
        parsed = {
            k: v[0] if isinstance(v, list) and v else v for k, v in response.querystring.items()
        }
    response._itsacat_params = parsed
    return parsed


def _dynamodb(
    op: str, p: Mapping[str, Any], region: str, account: str, partition: str
) -> list[tuple[str, str]]:
    def table(name: str) -> str:
        if name.startswith("arn:"):
            return name
        return f"arn:{partition}:dynamodb:{region}:{account}:table/{name}"

    action = f"dynamodb:{op}"
    if op in ("BatchWriteItem", "BatchGetItem"):
        return [(action, table(name)) for name in p.get("RequestItems") or {}] or [(action, "*")]
    if op in ("TransactWriteItems", "TransactGetItems"):
        pairs = []
        for item in p.get("TransactItems") or []:
            for kind, inner in item.items():
                name = inner.get("TableName") if isinstance(inner, Mapping) else None
                if name:
                    pairs.append((_TRANSACT_ACTIONS.get(kind, action), table(name)))
        return pairs or [(action, "*")]
    name = p.get("TableName")
    if name:
        if op in ("Query", "Scan") and p.get("IndexName"):
            return [(action, f"{table(name)}/index/{p['IndexName']}")]
        return [(action, table(name))]
    return [(action, p.get("ResourceArn") or p.get("TableArn") or p.get("StreamArn") or "*")]


def _sqs(
    op: str, p: Mapping[str, Any], region: str, account: str, partition: str
) -> list[tuple[str, str]]:
    action = _ACTION_ALIASES.get(f"sqs:{op}", f"sqs:{op}")
    url = p.get("QueueUrl")
    if url:
        path = urlsplit(url).path.strip("/").split("/") if "://" in url else [url]
        owner = path[-2] if len(path) >= 2 and path[-2].isdigit() else account
        return [(action, f"arn:{partition}:sqs:{region}:{owner}:{path[-1]}")]
    if p.get("QueueName"):
        owner = p.get("QueueOwnerAWSAccountId") or account
        return [(action, f"arn:{partition}:sqs:{region}:{owner}:{p['QueueName']}")]
    return [(action, p.get("SourceArn") or "*")]


def _sns(
    op: str, p: Mapping[str, Any], region: str, account: str, partition: str
) -> list[tuple[str, str]]:
    action = _ACTION_ALIASES.get(f"sns:{op}", f"sns:{op}")
    topic = p.get("TopicArn") or p.get("TargetArn") or p.get("ResourceArn")
    if not topic and p.get("SubscriptionArn"):
        topic = str(p["SubscriptionArn"]).rsplit(":", 1)[0]  # topic ARN + ":" + subscription id
    if not topic and op == "CreateTopic" and p.get("Name"):
        topic = f"arn:{partition}:sns:{region}:{account}:{p['Name']}"
    return [(action, topic or "*")]


def _logs(
    op: str, p: Mapping[str, Any], region: str, account: str, partition: str
) -> list[tuple[str, str]]:
    action = f"logs:{op}"
    group = p.get("logGroupName") or p.get("logGroupIdentifier")
    if group and str(group).startswith("arn:"):
        group = str(group).split(":log-group:", 1)[-1].removesuffix(":*")
    prefix = f"arn:{partition}:logs:{region}:{account}:log-group:"
    if group:
        stream = p.get("logStreamName") if op in _LOG_STREAM_OPERATIONS else None
        return [(action, f"{prefix}{group}:log-stream:{stream or ''}")]
    if op == "DescribeLogGroups":
        return [(action, f"{prefix}:log-stream:")]
    return [(action, p.get("resourceArn") or "*")]


_FUNCTION_IN_PATH = re.compile(r"/functions/([^/]+)")


def _lambda(
    response: Any, op: str, region: str, account: str, partition: str
) -> list[tuple[str, str]]:
    action = _ACTION_ALIASES.get(f"lambda:{op}", f"lambda:{op}")
    match = _FUNCTION_IN_PATH.search(response.path)
    name = unquote(match.group(1)) if match else None
    if name is None and op == "CreateFunction":
        name = _params(response).get("FunctionName")
    if not name:
        return [(action, "*")]  # listings, event source mappings, layers, tags by ARN
    if name.startswith("arn:"):
        base, _, qualifier = name.partition(":function:")
        qualifier_parts = qualifier.split(":", 1)
        name, qualifier = qualifier_parts[0], qualifier_parts[1] if len(qualifier_parts) > 1 else ""
        arn = f"{base}:function:{name}"
    else:
        parts = name.split(":")
        if len(parts) >= 3 and parts[1] == "function":  # ACCOUNT:function:NAME[:QUALIFIER]
            account, parts = parts[0], parts[2:]
        name, qualifier = parts[0], parts[1] if len(parts) > 1 else ""
        arn = f"arn:{partition}:lambda:{region}:{account}:function:{name}"
    qualifier = (response.querystring.get("Qualifier") or [qualifier])[0] or ""
    return [(action, f"{arn}:{qualifier}" if qualifier else arn)]


def _s3(response: Any, op: str, resource: str) -> list[tuple[str, str]]:
    """moto computed the action and the bucket or object ARN; fix what AWS does differently."""
    action = _ACTION_ALIASES.get(f"s3:{op}", f"s3:{op}")
    query = response.querystring
    if action == "s3:GetObject" and "versionId" in query:  # HEAD of a version, too
        action = "s3:GetObjectVersion"
    pairs = [(action, resource)]
    if action == "s3:DeleteObject" and response.method == "POST" and "delete" in query:
        # DeleteObjects: AWS checks s3:DeleteObject(Version) on every key, not on the bucket.
        pairs = _delete_objects(resource, response.body) or pairs
    copy_source = response.headers.get("x-amz-copy-source")
    if action == "s3:PutObject" and copy_source:  # CopyObject also reads the source
        source, _, version = unquote(copy_source).lstrip("/").partition("?versionId=")
        read = "s3:GetObjectVersion" if version else "s3:GetObject"
        pairs.append((read, f"{resource.split(':::', 1)[0]}:::{source}"))
    return pairs


def _delete_objects(bucket_arn: str, body: Any) -> list[tuple[str, str]]:
    try:
        root = ElementTree.fromstring(body)
    except (ElementTree.ParseError, TypeError, ValueError):
        return []
    pairs = []
    for obj in root.iter():
        if obj.tag.rsplit("}", 1)[-1] != "Object":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in obj}
        action = "s3:DeleteObjectVersion" if fields.get("VersionId") else "s3:DeleteObject"
        pairs.append((action, f"{bucket_arn}/{fields.get('Key', '')}"))
    return pairs


def _requested(
    response: Any, service: str, is_s3: bool, moto_resource: str
) -> list[tuple[str, str]]:
    """Every (IAM action, resource ARN) this request needs; resource "*" where not known."""
    op = response._get_action() or ""
    if is_s3:
        return _s3(response, op, moto_resource)
    region, account, partition = response.region, response.current_account, response.partition
    if service == "dynamodb":
        return _dynamodb(op, _params(response), region, account, partition)
    if service == "sqs":
        return _sqs(op, _params(response), region, account, partition)
    if service == "sns":
        return _sns(op, _params(response), region, account, partition)
    if service == "logs":
        return _logs(op, _params(response), region, account, partition)
    if service == "lambda":
        return _lambda(response, op, region, account, partition)
    if service == "sts":
        if op == "GetCallerIdentity":  # AWS allows it even under an explicit deny
            return []
        return [(f"sts:{op}", _params(response).get("RoleArn") or "*")]
    # Other services: moto's own resource (IAM roles, SQS/STS ones above) or "*".
    return [(f"{_IAM_PREFIX.get(service, service)}:{op}", moto_resource or "*")]


# ------------------------------------------------------------------ the hook into moto


def _credentials(response: Any) -> tuple[str, str, str | None] | None:
    """(access key, credential-scope service, session token) of an assumed-role-looking
    request, or None when the key cannot be an assumed role's (the account owner's)."""
    key: str = response.access_key  # moto's, from the Authorization header or AWSAccessKeyId
    headers = response.headers
    auth = headers.get("Authorization")
    if auth is not None:
        if not key.startswith(_ASSUMED_ROLE_KEY_PREFIX):
            return None
        scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
        return key, scope[3] if len(scope) > 3 else "", headers.get("X-Amz-Security-Token")
    # A presigned URL: SigV4 (X-Amz-Credential) or SigV2 (AWSAccessKeyId), token in the query.
    query = response.querystring
    scope = (query.get("X-Amz-Credential") or [""])[0].split("/")
    if len(scope) > 3:
        key, service = scope[0], scope[3]
    else:
        service = str(response.service_name)  # SigV2: S3
    if not key.startswith(_ASSUMED_ROLE_KEY_PREFIX):
        return None
    token = (query.get("X-Amz-Security-Token") or query.get("x-amz-security-token") or [None])[0]
    return key, service, token


def check_request(response: Any, is_s3: bool, moto_resource: str = "*") -> None:
    """Authorise one request moto is serving (`response` is moto's `BaseResponse`); raise
    the service's error when refused. Free for the account owner's keys."""
    credentials = _credentials(response)
    if credentials is None:
        return
    key, service, token = credentials
    session = _AUTHORIZER.session(key, response.current_account, response.partition)
    if session is None:
        return
    principal: str = session.arn
    if token != session.session_token:
        _raise(response, service, is_s3, principal, None)
    requested = _requested(response, service, is_s3, moto_resource)
    refused = _AUTHORIZER.first_refused(session, requested)
    if refused is None and is_s3:
        refused = _missing_object_refusal(response, session, requested)
    if refused is not None:
        _raise(response, service, is_s3, principal, refused)


def _missing_object_refusal(
    response: Any, session: Any, requested: list[tuple[str, str]]
) -> tuple[str, str, str] | None:
    """GetObject/HeadObject of a key that does not exist is 403, not 404, unless the caller
    may s3:ListBucket (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html)."""
    action, resource = requested[0]
    if action not in ("s3:GetObject", "s3:GetObjectVersion") or "/" not in resource:
        return None
    from moto.s3.models import FakeKey, s3_backends

    bucket_arn, _, key = resource.partition("/")
    bucket_name = bucket_arn.rsplit(":", 1)[-1]
    bucket = s3_backends[response.current_account][response.partition].buckets.get(bucket_name)
    if bucket is None:
        return None  # NoSuchBucket, as moto answers
    version = (response.querystring.get("versionId") or [None])[0]
    versions = bucket.keys.getlist(key, default=[]) if key in bucket.keys else []
    if version is None:
        exists = bool(versions) and isinstance(versions[-1], FakeKey)
    else:
        exists = any(str(v.version_id) == str(version) for v in versions)
    if exists:
        return None
    return _AUTHORIZER.first_refused(session, [("s3:ListBucket", bucket_arn)])


@lru_cache(maxsize=1)
def _error_class() -> Callable[[int, str], Exception]:
    """An HTTPException: moto's `call_action` answers it with its `description` and `code`."""
    from werkzeug.exceptions import HTTPException

    class ErrorResponse(HTTPException):
        def __init__(self, status: int, body: str) -> None:
            super().__init__(description=body)
            self.code = status

    return ErrorResponse


def _raise(
    response: Any,
    service: str,
    is_s3: bool,
    principal: str,
    refused: tuple[str, str, str] | None,
) -> None:
    message = _INVALID_TOKEN if refused is None else denial_message(principal, *refused)
    if is_s3:
        from moto.s3.exceptions import BucketAccessDeniedError, S3InvalidTokenError

        if refused is None:
            raise S3InvalidTokenError()
        bucket = refused[1].partition(":::")[2].partition("/")[0]
        error = BucketAccessDeniedError(bucket)
        error.message = message
        raise error
    headers = response.headers
    request_id = str(uuid.uuid4())
    extra: dict[str, str] = {"x-amzn-RequestId": request_id}
    if "X-Amz-Target" in headers:  # JSON 1.0/1.1 protocols
        code = "AccessDeniedException" if refused else "UnrecognizedClientException"
        kind = f"com.amazon.coral.service#{code}" if service in ("dynamodb", "sqs") else code
        if service == "sqs":  # botocore reports the query-protocol code from this header
            extra["x-amzn-query-error"] = (
                "AccessDenied;Sender" if refused else "InvalidClientTokenId;Sender"
            )
        content_type = headers.get("Content-Type", "")
        if not content_type.startswith("application/x-amz-json"):
            content_type = "application/x-amz-json-1.1"
        extra["Content-Type"] = content_type
        status, body = 400, json.dumps({"__type": kind, "message": message})
    elif headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        if refused is None:
            code = "InvalidClientTokenId"
        else:
            code = "AuthorizationError" if service == "sns" else "AccessDenied"
        namespace = _QUERY_NAMESPACE.get(service)
        xmlns = f' xmlns="{namespace}"' if namespace else ""
        extra["Content-Type"] = "text/xml"
        status = 403
        body = (
            f'<?xml version="1.0"?><ErrorResponse{xmlns}><Error><Type>Sender</Type>'
            f"<Code>{code}</Code><Message>{escape(message)}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
    else:  # REST-JSON (Lambda)
        code = "AccessDeniedException" if refused else "UnrecognizedClientException"
        extra["x-amzn-ErrorType"] = code
        extra["Content-Type"] = "application/json"
        status, body = 403, json.dumps({"Type": "User", "Message": message})
    response.response_headers.update(extra)
    raise _error_class()(status, body)


# ------------------------------------------------------------------------ moto patches


@lru_cache(maxsize=4096)
def _pattern(text: str, ignore_case: bool) -> re.Pattern[str]:
    wildcard = re.escape(text).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(wildcard, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _check_element_matches(self: Any, statement_element: str, value: str) -> bool:
    """moto's matcher, fixed: other regex characters in ARNs are literal ("." in bucket
    names, "$" in "$LATEST", "[" in log streams), "?" matches one character, and action
    names are case-insensitive, as in IAM. Compiled patterns are cached."""
    patterns = self._statement[statement_element]
    if isinstance(patterns, str):
        patterns = [patterns]
    ignore_case = statement_element in ("Action", "NotAction")
    return any(_pattern(p, ignore_case).fullmatch(value) for p in patterns)


def _unconditional_only(is_action_permitted: Any) -> Any:
    """A statement with a Condition does not apply. The emulator has no request context,
    and on AWS a condition on a key absent from the request's context is not met (moto
    took a StringLike on an absent `s3:prefix` as met, and an unmet condition as an
    explicit deny: kinder than AWS in one case, harsher in the other)."""
    from moto.iam.access_control import PermissionResult

    def permitted(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self._statement.get("Condition"):
            return PermissionResult.NEUTRAL
        return is_action_permitted(self, *args, **kwargs)

    return permitted


def install() -> None:
    """Route moto's per-request IAM check here and fix its matcher (idempotent)."""
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.iam.access_control import IAMPolicyStatement

    if getattr(ActionAuthenticatorMixin, "_itsacat_iam", False):
        return

    def authenticate_and_authorize(self: Any, iam_request_cls: type, resource: str = "*") -> None:
        check_request(self, iam_request_cls.__name__ == "S3IAMRequest", resource)

    # Replaces moto's switch (settings.INITIAL_NO_AUTH_ACTION_COUNT, off by default), which
    # would authenticate every key and evaluate non-S3 requests on resource "*".
    ActionAuthenticatorMixin._authenticate_and_authorize_action = (  # type: ignore[method-assign]
        authenticate_and_authorize
    )
    IAMPolicyStatement._check_element_matches = _check_element_matches  # type: ignore[method-assign]
    IAMPolicyStatement.is_action_permitted = _unconditional_only(  # type: ignore[method-assign]
        IAMPolicyStatement.is_action_permitted
    )
    ActionAuthenticatorMixin._itsacat_iam = True  # type: ignore[attr-defined]
