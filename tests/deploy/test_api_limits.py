"""The API template's limits, access logs, timeout and role, read off the dry run's
build (which cfn-lint checks in test_package.py)."""

from __future__ import annotations

import json
from typing import Any

from itsacat.deploy import package, plan


def _api(dry_run: tuple[plan.Settings, package.Build]) -> dict[str, Any]:
    _, built = dry_run
    return dict(json.loads(built.api_template.read_text()))


def test_concurrency_and_throttling_are_parameters_with_defaults(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    t = _api(dry_run)
    params = t["Parameters"]
    assert params["ApiReservedConcurrency"]["Default"] == 20
    assert params["ApiThrottlingRateLimit"]["Default"] == 20
    assert params["ApiThrottlingBurstLimit"]["Default"] == 40
    fn = t["Resources"]["APIHandler"]["Properties"]
    assert fn["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReserveConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    api = t["Resources"]["RestAPI"]["Properties"]
    (settings,) = api["MethodSettings"]
    assert settings["ResourcePath"] == "/*" and settings["HttpMethod"] == "*"
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    # Both throttles answer a JSON 429 in the API's error shape, as `itsacat serve` does.
    for name in ("THROTTLED", "INTEGRATION_FAILURE"):
        response = api["GatewayResponses"][name]
        assert response["StatusCode"] == 429
        body = json.loads(response["ResponseTemplates"]["application/json"])
        assert set(body) == {"error", "code"}


def test_the_stage_writes_json_access_logs_to_a_group_of_the_stack(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    t = _api(dry_run)
    setting = t["Resources"]["RestAPI"]["Properties"]["AccessLogSetting"]
    assert setting["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    group = t["Resources"]["ApiAccessLogGroup"]
    assert group["Type"] == "AWS::Logs::LogGroup"
    assert group["Properties"]["RetentionInDays"] == package.API_LOG_RETENTION_DAYS
    line = setting["Format"]
    assert "\n" not in line
    fields = json.loads(line)  # valid JSON once API Gateway substitutes the (quoted) values
    for name in (
        "requestId",
        "ip",
        "requestTime",
        "httpMethod",
        "resourcePath",
        "status",
        "responseLength",
        "integrationLatency",
    ):
        assert fields[name].startswith("$context."), name
    assert fields["ip"] == "$context.identity.sourceIp"
    assert "ApiAccessLogGroupName" in t["Outputs"]


def test_the_function_times_out_before_the_gateway(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    fn = _api(dry_run)["Resources"]["APIHandler"]["Properties"]
    assert fn["Timeout"] == 25 < 29  # API Gateway's integration timeout


def test_the_role_may_list_the_bucket_so_a_missing_model_is_404(
    dry_run: tuple[plan.Settings, package.Build],
) -> None:
    role = _api(dry_run)["Resources"]["ApiHandlerRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    (listing,) = [s for s in statements if s["Action"] == ["s3:ListBucket"]]
    assert listing["Resource"] == [{"Fn::Sub": "arn:${AWS::Partition}:s3:::${DataBucket}"}]
    assert "Condition" not in listing  # HEAD carries no s3:prefix: a condition makes it 403
