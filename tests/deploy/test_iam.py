"""Least privilege, read off the templates: no wildcards, no managed policies.

Walks the project's template and the API template the dry run writes. A statement fails when
it allows `*` (or `service:*`) actions, or `*` resources for an action that can be scoped,
and no role may carry AWS managed policies (theirs are `*`).

That each role allows *enough* is not checked here against a hand-written list (which can
share the template's mistakes): the embedded stack runs every function under its own role
with IAM enforced on action and resource, so every test that trains, recovers or re-drives
checks it, and tests/e2e/test_least_privilege.py removes a permission and sees the run fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from itsacat.deploy import package, plan

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = package.load_template(ROOT / "templates" / "template.yaml")


def roles(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            props = resource["Properties"]
            assert not props.get("ManagedPolicyArns"), f"{logical_id} has managed policies"
            out[logical_id] = [
                s for p in props.get("Policies", []) for s in p["PolicyDocument"]["Statement"]
            ]
    return out


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_problems(role: str, statements: list[dict[str, Any]]) -> list[str]:
    problems = []
    for s in statements:
        assert s["Effect"] == "Allow"
        for action in as_list(s["Action"]):
            if action == "*" or action.endswith(":*"):
                problems.append(f"{role}/{s.get('Sid')}: action {action}")
        for resource in as_list(s["Resource"]):
            text = json.dumps(resource)
            if resource == "*" or text.endswith(':*:*:*"') or "arn:aws:logs:*" in text:
                problems.append(f"{role}/{s.get('Sid')}: resource {text}")
    return problems


def grants(statements: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(action, resource) pairs, resources written compactly: Ref/GetAtt names, Sub text."""

    def short(r: Any) -> str:
        if isinstance(r, str):
            return r
        if "Ref" in r:
            return r["Ref"]
        if "Fn::GetAtt" in r:
            return ".".join(as_list(r["Fn::GetAtt"]))
        sub = r["Fn::Sub"]
        text = sub if isinstance(sub, str) else sub[0]
        prefix = "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:function:"
        return text.replace(prefix, "fn:")

    return {
        (a, short(r))
        for s in statements
        for a in as_list(s["Action"])
        for r in as_list(s["Resource"])
    }


def test_functions_use_the_templates_roles_not_generated_ones() -> None:
    for logical_id, resource in TEMPLATE["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function":
            props = resource["Properties"]
            assert "Policies" not in props, logical_id
            assert props["Role"] == {"Fn::GetAtt": [logical_id.replace("Function", "Role"), "Arn"]}


def test_no_role_in_the_template_has_wildcards() -> None:
    problems = [p for role, st in roles(TEMPLATE).items() for p in wildcard_problems(role, st)]
    assert problems == []


def test_api_role_has_no_wildcards_and_reads_models_only(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    _, built = dry_run
    api = json.loads(built.api_template.read_text())
    statements = roles(api)["ApiHandlerRole"]
    assert wildcard_problems("ApiHandlerRole", statements) == []
    s3 = {(a, r) for a, r in grants(statements) if a.startswith("s3:")}
    assert ("s3:GetObject", "arn:${AWS::Partition}:s3:::${DataBucket}/models/*") in s3
    assert {a for a, _ in s3} <= {"s3:GetObject", "s3:ListBucket"}
    assert all("models/" in r for a, r in s3 if a == "s3:GetObject")
    logs = {(a, r) for a, r in grants(statements) if a.startswith("logs:")}
    assert logs == {
        ("logs:CreateLogStream", "ApiLogGroup.Arn"),
        ("logs:PutLogEvents", "ApiLogGroup.Arn"),
    }


def test_the_neuron_can_only_read_preprocessed_data() -> None:
    s3 = {g for g in grants(roles(TEMPLATE)["NeuronRole"]) if not g[0].startswith("logs:")}
    assert s3 == {("s3:GetObject", "${DataBucket.Arn}/runs/*")}


def test_the_trainer_may_batch_write_its_costs() -> None:
    """The review's finding: cost rows go in with BatchWriteItem (state/costs.py), which the
    role did not grant. (That every call is granted is shown by the whole suite, which runs
    each function under its role with IAM enforced; see tests/e2e/test_least_privilege.py.)"""
    costs = {a for a, r in grants(roles(TEMPLATE)["TrainerRole"]) if r == "CostsTable.Arn"}
    assert costs == {"dynamodb:BatchWriteItem", "dynamodb:Query"}


def test_the_walker_catches_wildcards() -> None:
    statements = [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/*"},
        {"Effect": "Allow", "Action": "dynamodb:GetItem", "Resource": "*"},
        {"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": "arn:aws:logs:*:*:*"},
    ]
    assert len(wildcard_problems("R", statements)) == 3


def test_the_watchdog_fails_a_stuck_preparation_only_after_the_queue_gave_up() -> None:
    """`PREPARE_LIMIT_SECONDS` outlasts every delivery of an upload: maxReceiveCount times
    the queue's visibility timeout, plus the launch function's timeout."""
    from trainer_lambdas.watchdog import PREPARE_LIMIT_SECONDS

    t = package.load_template(ROOT / "templates" / "template.yaml")["Resources"]
    queue = t["TrainingInputQueue"]["Properties"]
    receives = queue["RedrivePolicy"]["maxReceiveCount"]
    launch_timeout = next(
        r["Properties"]["Timeout"]
        for r in t.values()
        if r["Type"] == "AWS::Serverless::Function" and "launch" in r["Properties"]["Handler"]
    )
    assert receives * queue["VisibilityTimeout"] + launch_timeout <= PREPARE_LIMIT_SECONDS
