"""The lean Invoke client signs exactly as botocore does (SigV4), for every function naming."""

import datetime

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from state.invoke import InvokeClient, Signer, invoke_path

NOW = datetime.datetime(2026, 11, 24, 1, 2, 3, tzinfo=datetime.UTC)


class _Clock(SigV4Auth):
    """botocore's signer at a fixed time (it reads the clock itself)."""

    def add_auth(self, request):  # type: ignore[no-untyped-def]
        import unittest.mock

        with unittest.mock.patch("botocore.auth.get_current_datetime", return_value=NOW):
            return super().add_auth(request)


@pytest.mark.parametrize(
    "function",
    [
        "itsacat-neuron",
        "arn:aws:lambda:eu-west-1:111122223333:function:itsacat-neuron",
        "itsacat-neuron:live",
        "odd name+with/chars",
    ],
)
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzEJr//token=="])
@pytest.mark.parametrize("host", ["lambda.eu-west-1.amazonaws.com", "127.0.0.1:4567"])
def test_signature_equals_botocores(function: str, token: str | None, host: str) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"kind": "neuron", "w": {"shape": [1, 2], "f8": "AAAA"}}'
    extra = {"X-Amz-Invocation-Type": "RequestResponse", "Content-Type": "application/json"}
    path = invoke_path(function)
    ours = Signer("eu-west-1").headers(
        "POST", host, path, body, creds.get_frozen_credentials(), extra, NOW
    )

    scheme = "http" if ":" in host else "https"
    req = AWSRequest(method="POST", url=f"{scheme}://{host}{path}", data=body, headers=dict(extra))
    _Clock(creds.get_frozen_credentials(), "lambda", "eu-west-1").add_auth(req)
    assert ours["Authorization"] == req.headers["Authorization"]
    assert ours["X-Amz-Date"] == req.headers["X-Amz-Date"] == "20261124T010203Z"
    assert ours.get("X-Amz-Security-Token") == req.headers.get("X-Amz-Security-Token")


def test_signing_key_follows_the_day_and_the_secret() -> None:
    s = Signer("us-east-1")
    c1 = Credentials("A", "secret-1").get_frozen_credentials()
    c2 = Credentials("A", "secret-2").get_frozen_credentials()
    h = lambda c, t: s.headers("POST", "h", "/p", b"", c, {}, t)["Authorization"]  # noqa: E731
    day2 = NOW + datetime.timedelta(days=1)
    assert len({h(c1, NOW), h(c2, NOW), h(c1, day2), h(c2, day2)}) == 4
    assert h(c1, NOW) == h(c1, NOW)


def test_endpoint_must_be_http() -> None:
    with pytest.raises(ValueError, match="not an HTTP"):
        InvokeClient("ftp://x", "us-east-1", None)
    c = InvokeClient("https://lambda.us-east-1.amazonaws.com", "us-east-1", None)
    assert (c.host, c.port, c.https) == ("lambda.us-east-1.amazonaws.com", 443, True)
    c = InvokeClient("http://127.0.0.1:4567", "us-east-1", None)
    assert (c.host, c.port, c.https) == ("127.0.0.1:4567", 4567, False)
