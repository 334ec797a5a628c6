"""What moto's CloudFormation leaves out, applied from the template through the service APIs.

moto creates most of the template but silently skips some resource types
(`AWS::SQS::QueuePolicy`, `AWS::Lambda::EventInvokeConfig`, `AWS::SNS::Subscription`) and
ignores a bucket's `NotificationConfiguration` and `VersioningConfiguration`, a table's
`TimeToLiveSpecification` and a role's `ManagedPolicyArns`.
Without them the local stack would not deliver S3 notifications or send failed asynchronous
invocations anywhere, so they are
applied here, from the same translated template, with the intrinsic functions they use
resolved against the created stack. Anything skipped that has no applier is reported, so a
new resource type in the template cannot go missing locally without anyone noticing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"


class Clients:
    """boto3 clients for the emulator, built once per service."""

    def __init__(self, endpoint_url: str) -> None:
        self.endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.endpoint_url,
                region_name=REGION,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(retries={"max_attempts": 2, "mode": "standard"}),
            )
        return self._clients[service]


class _NoValue:
    """`AWS::NoValue`: the property or list item disappears."""


NO_VALUE = _NoValue()


@dataclass
class Context:
    """A translated template with the physical resources CloudFormation created for it."""

    stack_name: str
    template: dict[str, Any]
    parameters: dict[str, str]
    # logical id -> {"type": ..., "physical_id": ...}
    resources: dict[str, dict[str, str]]

    def parameter(self, name: str) -> str:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{self.stack_name}",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        declared = self.template.get("Parameters", {}).get(name)
        if declared is not None and "Default" in declared:
            return str(declared["Default"])
        raise KeyError(f"no value for parameter {name}")

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.resources:
            return self.resources[name]["physical_id"]
        return self.parameter(name)

    def get_att(self, logical_id: str, attribute: str) -> str:
        resource = self.resources[logical_id]
        kind, physical = resource["type"], resource["physical_id"]
        if attribute in ("Arn", "TopicArn", "QueueArn"):
            return arn_of(kind, physical)
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return physical.rstrip("/").rsplit("/", 1)[-1]
        if kind == "AWS::SQS::Queue" and attribute == "QueueUrl":
            return physical
        raise KeyError(f"cannot resolve Fn::GetAtt {logical_id}.{attribute} locally")

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def resolve(self, value: Any) -> Any:
        """Resolve the intrinsic functions of `value` (those the backfilled resources use)."""
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, arg),) = value.items()
            handler = _INTRINSICS.get(key)
            if handler is not None:
                return handler(self, arg)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def arn_of(resource_type: str, physical_id: str) -> str:
    """The ARN of a resource, from its type and physical id (as moto reports it)."""
    if physical_id.startswith("arn:"):
        return physical_id
    name = physical_id.rstrip("/").rsplit("/", 1)[-1]
    formats = {
        "AWS::SQS::Queue": f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}",
        "AWS::S3::Bucket": f"arn:aws:s3:::{physical_id}",
        "AWS::Lambda::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{physical_id}",
        "AWS::DynamoDB::Table": f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{physical_id}",
        "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT_ID}:role/{physical_id}",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{physical_id}:*",
        "AWS::SNS::Topic": f"arn:aws:sns:{REGION}:{ACCOUNT_ID}:{physical_id}",
    }
    if resource_type not in formats:
        raise KeyError(f"no ARN format for {resource_type}")
    return formats[resource_type]


_SUB_VARIABLE = re.compile(r"\$\{(!?)([^}]+)\}")


def _sub(ctx: Context, arg: Any) -> str:
    text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], ctx.resolve(arg[1]))

    def replace(match: re.Match[str]) -> str:
        literal, name = match.groups()
        if literal:
            return "${" + name + "}"
        if name in variables:
            return str(variables[name])
        if "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            return ctx.get_att(logical_id, attribute)
        return str(ctx.ref(name))

    return _SUB_VARIABLE.sub(replace, text)


def _get_att(ctx: Context, arg: Any) -> str:
    logical_id, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
    return ctx.get_att(logical_id, attribute)


def _if(ctx: Context, arg: Any) -> Any:
    name, when_true, when_false = arg
    return ctx.resolve(when_true if ctx.condition(name) else when_false)


def _join(ctx: Context, arg: Any) -> str:
    separator, items = arg
    return str(separator).join(str(v) for v in ctx.resolve(items))


def _select(ctx: Context, arg: Any) -> Any:
    index, items = arg
    return ctx.resolve(items)[int(ctx.resolve(index))]


def _split(ctx: Context, arg: Any) -> list[str]:
    separator, text = arg
    return str(ctx.resolve(text)).split(separator)


_INTRINSICS: dict[str, Callable[[Context, Any], Any]] = {
    "Ref": lambda ctx, arg: ctx.ref(arg),
    "Fn::GetAtt": _get_att,
    "Fn::Sub": _sub,
    "Fn::If": _if,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::Equals": lambda ctx, arg: str(ctx.resolve(arg[0])) == str(ctx.resolve(arg[1])),
    "Fn::Not": lambda ctx, arg: not ctx.resolve(arg[0]),
    "Fn::And": lambda ctx, arg: all(ctx.resolve(a) for a in arg),
    "Fn::Or": lambda ctx, arg: any(ctx.resolve(a) for a in arg),
    "Condition": lambda ctx, arg: ctx.condition(arg),
}


def resolve_static(value: Any, parameters: dict[str, str], stack_name: str) -> Any:
    """Resolve a value that refers only to parameters and pseudo parameters."""
    return Context(stack_name, {}, parameters, {}).resolve(value)


# ------------------------------------------------------------------------ appliers


def _queue_policy(clients: Clients, ctx: Context, properties: dict[str, Any]) -> None:
    policy = json.dumps(properties["PolicyDocument"])
    for queue_url in properties["Queues"]:
        clients.client("sqs").set_queue_attributes(
            QueueUrl=queue_url, Attributes={"Policy": policy}
        )


def _event_invoke_config(clients: Clients, ctx: Context, properties: dict[str, Any]) -> None:
    request: dict[str, Any] = {"FunctionName": properties["FunctionName"]}
    for key in ("MaximumRetryAttempts", "MaximumEventAgeInSeconds", "DestinationConfig"):
        if key in properties:
            request[key] = properties[key]
    if properties.get("Qualifier") not in (None, "$LATEST"):
        request["Qualifier"] = properties["Qualifier"]
    clients.client("lambda").put_function_event_invoke_config(**request)


def _subscription(clients: Clients, ctx: Context, properties: dict[str, Any]) -> None:
    clients.client("sns").subscribe(
        TopicArn=properties["TopicArn"],
        Protocol=properties["Protocol"],
        Endpoint=properties["Endpoint"],
    )


_APPLIERS: dict[str, Callable[[Clients, Context, dict[str, Any]], None]] = {
    "AWS::SQS::QueuePolicy": _queue_policy,
    "AWS::Lambda::EventInvokeConfig": _event_invoke_config,
    "AWS::SNS::Subscription": _subscription,
}


def bucket_notification_request(notification: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's `NotificationConfiguration` in the shape of the S3 API."""

    def key_filter(config: dict[str, Any]) -> dict[str, Any]:
        rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        return {"Filter": {"Key": {"FilterRules": rules}}} if rules else {}

    request: dict[str, Any] = {}
    kinds = (
        ("QueueConfigurations", "Queue", "QueueArn"),
        ("TopicConfigurations", "Topic", "TopicArn"),
        ("LambdaConfigurations", "Function", "LambdaFunctionArn"),
    )
    for cfn_key, target_key, api_key in kinds:
        configs = notification.get(cfn_key, [])
        if configs:
            request[cfn_key] = [
                {api_key: c[target_key], "Events": [c["Event"]], **key_filter(c)} for c in configs
            ]
    if notification.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        request["EventBridgeConfiguration"] = {}
    return request


def apply(clients: Clients, ctx: Context) -> list[str]:
    """Apply every skipped resource and ignored property; return what could not be applied."""
    not_emulated: list[str] = []
    for logical_id, resource in ctx.template["Resources"].items():
        kind = resource["Type"]
        condition = resource.get("Condition")
        if condition is not None and not ctx.condition(condition):
            continue
        properties = resource.get("Properties", {})
        if logical_id not in ctx.resources:
            applier = _APPLIERS.get(kind)
            if applier is None:
                not_emulated.append(f"{logical_id} ({kind})")
                continue
            applier(clients, ctx, ctx.resolve(properties))
            ctx.resources[logical_id] = {"type": kind, "physical_id": f"{logical_id}-applied"}
        elif kind == "AWS::DynamoDB::Table" and "TimeToLiveSpecification" in properties:
            spec = ctx.resolve(properties["TimeToLiveSpecification"])
            clients.client("dynamodb").update_time_to_live(
                TableName=ctx.resources[logical_id]["physical_id"],
                TimeToLiveSpecification={
                    "AttributeName": spec["AttributeName"],
                    "Enabled": str(spec.get("Enabled", True)).lower() == "true",
                },
            )
        elif kind == "AWS::IAM::Role" and properties.get("ManagedPolicyArns"):
            # moto's CloudFormation creates the role without its managed policies (SAM gives
            # a generated role AWSLambdaBasicExecutionRole this way).
            role = ctx.resources[logical_id]["physical_id"]
            for arn in ctx.resolve(properties["ManagedPolicyArns"]):
                clients.client("iam").attach_role_policy(RoleName=role, PolicyArn=arn)
        elif kind == "AWS::S3::Bucket":
            bucket = ctx.resources[logical_id]["physical_id"]
            if "VersioningConfiguration" in properties:
                status = ctx.resolve(properties["VersioningConfiguration"])["Status"]
                clients.client("s3").put_bucket_versioning(
                    Bucket=bucket, VersioningConfiguration={"Status": status}
                )
            if "NotificationConfiguration" in properties:
                request = bucket_notification_request(
                    ctx.resolve(properties["NotificationConfiguration"])
                )
                clients.client("s3").put_bucket_notification_configuration(
                    Bucket=bucket, NotificationConfiguration=request
                )
    return not_emulated
