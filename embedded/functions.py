"""What the local runtime knows of each function, read back from the emulator.

The runtime does not parse the template a second time: CloudFormation already created the
functions in the emulator with their handler, timeout, memory and environment resolved
(`!Ref` and `!Sub` turned into real names), so it asks the Lambda API for them, as a user
would with `aws lambda get-function-configuration`. The event invoke config (retries and
destinations), the event source mappings and the schedules come from the emulator too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from embedded.deploy import DeployedStack


@dataclass(frozen=True)
class FunctionSpec:
    """One function as the runtime runs it."""

    name: str
    arn: str
    handler: str
    timeout_s: int
    memory_mb: int
    environment: dict[str, str]
    role: str = ""
    # where the deployed code package and the layers are, in the emulator's S3
    code: dict[str, str] | None = None
    layers: tuple[dict[str, str], ...] = ()
    max_retry_attempts: int = 2
    on_failure: str | None = None
    on_success: str | None = None
    # LoggingConfig: "Text" or "JSON"; Lambda's own START/END/REPORT lines are INFO-level
    # system logs, left out when SystemLogLevel is WARN or ERROR
    log_format: str = "Text"
    system_log_level: str = "INFO"
    reserved_concurrency: int | None = None  # ReservedConcurrentExecutions, if any

    @property
    def log_group(self) -> str:
        return f"/aws/lambda/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arn": self.arn,
            "handler": self.handler,
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "environment": self.environment,
            "role": self.role,
            "code": self.code,
            "layers": list(self.layers),
            "max_retry_attempts": self.max_retry_attempts,
            "on_failure": self.on_failure,
            "on_success": self.on_success,
            "log_format": self.log_format,
            "system_log_level": self.system_log_level,
            "reserved_concurrency": self.reserved_concurrency,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionSpec:
        return cls(**{**data, "layers": tuple(data.get("layers", ()))})


@dataclass(frozen=True)
class QueueSource:
    """An SQS event source mapping: the relay drains `queue_url` into `function`."""

    function: str
    queue_arn: str
    queue_url: str
    batch_size: int
    report_batch_item_failures: bool = False


@dataclass(frozen=True)
class Schedule:
    """A scheduled rule targeting a function (EventBridge, `rate(...)`)."""

    function: str
    rule_arn: str
    expression: str
    period_s: float


@dataclass
class Topology:
    """Everything the runtime serves, for all stacks."""

    functions: dict[str, FunctionSpec] = field(default_factory=dict)
    queue_sources: list[QueueSource] = field(default_factory=list)
    schedules: list[Schedule] = field(default_factory=list)


_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float | None:
    """Seconds between runs of a `rate(...)` expression; None for `cron(...)` and the like."""
    match = _RATE.match(expression.strip())
    if not match:
        return None
    return int(match.group(1)) * _UNIT_S[match.group(2).rstrip("s")]


def load_topology(clients: Any, stacks: list[DeployedStack]) -> Topology:
    """Read every function of `stacks` (and its sources and schedules) from the emulator."""
    lam, sqs, events = clients.client("lambda"), clients.client("sqs"), clients.client("events")
    topology = Topology()
    for stack in stacks:
        names = [
            r["physical_id"]
            for r in stack.resources.values()
            if r["type"] == "AWS::Lambda::Function"
        ]
        for name in names:
            config = lam.get_function_configuration(FunctionName=name)
            spec = FunctionSpec(
                name=name,
                arn=config["FunctionArn"],
                handler=config["Handler"],
                timeout_s=int(config.get("Timeout", 3)),
                memory_mb=int(config.get("MemorySize", 128)),
                # Lambda's environment values are strings; moto leaves a resolved Number
                # parameter as an int, which a process environment would refuse.
                environment={
                    k: str(v) for k, v in config.get("Environment", {}).get("Variables", {}).items()
                },
                role=config.get("Role", ""),
                code=stack.code.get(name),
                layers=tuple(stack.layers.get(name, ())),
                log_format=stack.logging.get(name, {}).get("LogFormat", "Text"),
                system_log_level=stack.logging.get(name, {}).get("SystemLogLevel", "INFO"),
                reserved_concurrency=lam.get_function_concurrency(FunctionName=name).get(
                    "ReservedConcurrentExecutions"
                ),
                **_invoke_config(lam, name),
            )
            topology.functions[name] = spec
            for mapping in lam.list_event_source_mappings(FunctionName=name)["EventSourceMappings"]:
                source_arn = mapping.get("EventSourceArn", "")
                if not source_arn.startswith("arn:aws:sqs:") or mapping.get("State") == "Disabled":
                    continue
                queue_name = source_arn.rsplit(":", 1)[-1]
                topology.queue_sources.append(
                    QueueSource(
                        function=name,
                        queue_arn=source_arn,
                        queue_url=sqs.get_queue_url(QueueName=queue_name)["QueueUrl"],
                        batch_size=int(mapping.get("BatchSize", 10)),
                        report_batch_item_failures="ReportBatchItemFailures"
                        in mapping.get("FunctionResponseTypes", []),
                    )
                )
    for rule in events.list_rules()["Rules"]:
        expression = rule.get("ScheduleExpression")
        if not expression or rule.get("State") != "ENABLED":
            continue
        period = rate_seconds(expression)
        for target in events.list_targets_by_rule(Rule=rule["Name"])["Targets"]:
            function = target["Arn"].split(":function:", 1)[-1].split(":")[0]
            if period and function in topology.functions:
                topology.schedules.append(Schedule(function, rule["Arn"], expression, period))
    return topology


def _invoke_config(lam: Any, name: str) -> dict[str, Any]:
    try:
        config = lam.get_function_event_invoke_config(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        return {}
    destinations = config.get("DestinationConfig", {})
    return {
        "max_retry_attempts": int(config.get("MaximumRetryAttempts", 2)),
        "on_failure": destinations.get("OnFailure", {}).get("Destination"),
        "on_success": destinations.get("OnSuccess", {}).get("Destination"),
    }
