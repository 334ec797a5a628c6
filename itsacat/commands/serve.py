"""`itsacat serve` (the prediction API under `chalice local`) and `itsacat predict`.

Both run the same `chalice_app/chalicelib` code as the deployed API, against the current
target: the S3 endpoint and bucket come from `target_env()`, the one place that knows
where the target's variables come from.

`itsacat serve` runs Chalice's local server (`chalice local`'s `LocalDevServer`) from
`python -m itsacat.commands.serve`, with one difference: the request handler plays the
part of API Gateway and Lambda in front of the app, and refuses with their 429 what the
deployed stack would (`Limiter`: the stage's token bucket, then the function's reserved
concurrency; the numbers are the API template's defaults, `package.API_LIMITS`). The app
itself has no local-only behaviour.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from itsacat import target
from itsacat.deploy.package import API_LIMITS, GATEWAY_RESPONSES, ApiLimits
from itsacat.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CHALICE_DIR = ROOT / "chalice_app"
# The Chalice stage for local serving: it sets no environment variables, so the bucket
# and endpoint given here are the ones the app sees (stage variables would override them).
LOCAL_STAGE = "local"
# `itsacat serve --stage`: the model stage served, and its default port.
STAGE_PORTS = {"production": 8000, "staging": 8080}
# What the app needs from a target: where S3 is, which bucket, and credentials for it.
TARGET_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "ITSACAT_BUCKET",
)


def target_env(resolved: dict[str, str] | None = None) -> dict[str, str]:
    """The current target's variables for the API (endpoint, bucket, credentials)."""
    env = resolved if resolved is not None else target.resolve()
    return api_identity({k: env[k] for k in TARGET_VARS if env.get(k)}, env)


def api_identity(api_env: dict[str, str], target_vars: dict[str, str]) -> dict[str, str]:
    """On the embedded stack, `api_env` with the credentials of the API's own role (the
    `ApiHandlerRole` of the API template, which the stack creates): the API reads models
    with what its policy allows, as on AWS, not with the account owner's keys. Elsewhere
    (AWS, or a bucket given by hand) `api_env` unchanged."""
    role = target_vars.get("ITSACAT_API_ROLE_ARN")
    endpoint = target_vars.get("AWS_ENDPOINT_URL")
    if not role or not endpoint:
        return api_env
    import boto3

    sts = boto3.client(
        "sts",
        endpoint_url=endpoint,
        region_name=target_vars.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=target_vars.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=target_vars.get("AWS_SECRET_ACCESS_KEY"),
    )
    try:
        answer = sts.assume_role(RoleArn=role, RoleSessionName="itsacat-api")["Credentials"]
    except Exception as e:  # the stack went away, or the role with it
        raise UserError(f"cannot take the API's role {role}: {e}") from e
    out = {k: v for k, v in api_env.items() if k != "AWS_PROFILE"}
    out.update(
        AWS_ACCESS_KEY_ID=answer["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=answer["SecretAccessKey"],
        AWS_SESSION_TOKEN=answer["SessionToken"],
    )
    return out


def chalicelib(name: str) -> ModuleType:
    """Import `chalicelib.<name>` from chalice_app/ (with the project root beside it)."""
    for path in (str(ROOT), str(CHALICE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    return importlib.import_module(f"chalicelib.{name}")


def check_allow_hosts(text: str) -> str:
    """`--allow-hosts`, validated with the API's own parser; returns it normalised."""
    config = chalicelib("config")
    try:
        networks = config.parse_allow_hosts(text)
    except config.ConfigError as e:
        raise UserError(str(e)) from e
    return ",".join(str(n) for n in networks)


def server_command(
    port: int,
    host: str,
    allow_hosts: str | None,
    base_env: dict[str, str],
    target: dict[str, str],
    limits: ApiLimits = API_LIMITS,
    model_stage: str = "production",
) -> tuple[list[str], dict[str, str]]:
    """The local server's command line and its environment (pure: nothing is run);
    `model_stage`: which model its `/image` serves (production, or the staging candidate)."""
    env = {**base_env, **target, "ITSACAT_STAGE": model_stage}
    python_path = [str(ROOT), *filter(None, base_env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    if allow_hosts is not None:
        env["ITSACAT_ALLOW_HOSTS"] = allow_hosts
    argv = [
        sys.executable,
        "-m",
        __name__,
        "--host",
        host,
        "--port",
        str(port),
        "--stage",
        LOCAL_STAGE,
        "--concurrency",
        str(limits.concurrency),
        "--rate",
        f"{limits.rate:g}",
        "--burst",
        str(limits.burst),
    ]
    return argv, env


class Limiter:
    """API Gateway's stage throttle and Lambda's reserved concurrency, in front of the app.

    `admit()` first takes a token from the bucket (`rate` a second, at most `burst`): none
    left is API Gateway's THROTTLED. Then a place among `concurrency` requests in the
    function at once: none free is the function's throttle, which API Gateway meets as an
    INTEGRATION_FAILURE. Both are answered 429 (package.GATEWAY_RESPONSES). A limit of 0
    is no limit. An admitted request holds its place until `release()`.
    """

    def __init__(self, limits: ApiLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._lock = threading.Lock()
        self._tokens = float(limits.burst)
        self._stamp = clock()
        self.busy = 0

    def admit(self) -> str | None:
        """None when the request may run; else the name of the gateway response refusing it."""
        with self._lock:
            if self.limits.rate > 0:
                now = self.clock()
                elapsed = max(0.0, now - self._stamp)
                self._tokens = min(self.limits.burst, self._tokens + elapsed * self.limits.rate)
                self._stamp = now
                if self._tokens < 1:
                    return "THROTTLED"
                self._tokens -= 1
            if 0 < self.limits.concurrency <= self.busy:
                return "INTEGRATION_FAILURE"
            self.busy += 1
            return None

    def release(self) -> None:
        with self._lock:
            self.busy -= 1


def limited_handler(limiter: Limiter) -> type:
    """Chalice's local request handler with `limiter` in front of the app."""
    from chalice.local import ChaliceRequestHandler, LocalGatewayException

    log = logging.getLogger("itsacat.serve")

    class LimitedRequestHandler(ChaliceRequestHandler):
        def _generic_handle(self) -> None:
            # As API Gateway: the whole request is received before the function is asked.
            headers, body = self._parse_payload()
            refusal = limiter.admit()
            if refusal is not None:
                log.warning("429 %s %s: %s", self.command, self.path[:200], refusal)
                answer = json.dumps(GATEWAY_RESPONSES[refusal]).encode()
                self._send_http_response(
                    429,
                    {
                        "Content-Type": "application/json",
                        "Cache-Control": "no-store",
                        "X-Content-Type-Options": "nosniff",
                        "Retry-After": "1",
                    },
                    answer,
                )
                return
            try:
                # What ChaliceRequestHandler._generic_handle does with the parsed request.
                response = self.local_gateway.handle_request(
                    method=self.command, path=self.path, headers=headers, body=body
                )
                out_headers = response["headers"].copy()
                out_headers.update(response["multiValueHeaders"])
                response = self._handle_binary(response)
                self._send_http_response(response["statusCode"], out_headers, response["body"])
            except LocalGatewayException as e:
                self._send_error_response(e)
            finally:
                limiter.release()

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    return LimitedRequestHandler


def run_local_server(host: str, port: int, stage: str, limits: ApiLimits) -> None:
    """What `chalice local --no-autoreload` does, with `limited_handler` as the handler."""
    os.environ["AWS_CHALICE_CLI_MODE"] = "true"
    from chalice import local
    from chalice.cli.factory import CLIFactory
    from chalice.deploy.validate import validate_routes

    os.chdir(CHALICE_DIR)
    config = CLIFactory(str(CHALICE_DIR), environ=os.environ).create_config_obj(
        chalice_stage_name=stage
    )
    app = config.chalice_app
    validate_routes(app.routes)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    # As chalice.local.create_local_server: `current_request` per thread.
    local.CustomLocalChalice.__bases__ = (local.LocalChalice, app.__class__)
    app.__class__ = local.CustomLocalChalice
    handler = limited_handler(Limiter(limits))
    server = local.LocalDevServer(app, config, host, port, handler_cls=handler)
    print(
        f"limits: {limits.concurrency or 'no'} concurrent, {limits.rate or 'no'} a second, "
        f"burst {limits.burst}",
        flush=True,
    )
    server.serve_forever()


def serve(args: argparse.Namespace) -> int:
    allow = check_allow_hosts(args.allow_hosts) if args.allow_hosts is not None else None
    resolved = target.resolve()
    limits = ApiLimits(args.concurrency, args.rate, args.burst)
    port = args.port if args.port is not None else STAGE_PORTS[args.stage]
    argv, env = server_command(
        port, args.host, allow, dict(os.environ), target_env(resolved), limits, args.stage
    )
    role = resolved.get("ITSACAT_API_ROLE_ARN")
    who = f"credentials of {role.rsplit('/', 1)[-1]}, " if role else ""
    if not env.get("ITSACAT_BUCKET"):
        print(
            "itsacat serve: warning: ITSACAT_BUCKET is not set; /image will answer 503",
            file=sys.stderr,
        )
    print(
        f"itsacat serve: http://{args.host}:{port}/ serving the {args.stage} model "
        f"(bucket {env.get('ITSACAT_BUCKET', '-')}, "
        f"S3 {env.get('AWS_ENDPOINT_URL', 'AWS')}, {who}"
        f"allowed private addresses: {env.get('ITSACAT_ALLOW_HOSTS') or 'none'}; "
        f"at most {limits.concurrency or 'unlimited'} requests at once, "
        f"{limits.rate or 'unlimited'}/s, burst {limits.burst})",
        file=sys.stderr,
        flush=True,
    )
    # Replace this process, so that its id is the server's and a signal stops the server.
    os.chdir(CHALICE_DIR)
    os.execve(argv[0], argv, env)
    return 0  # not reached


def predict(args: argparse.Namespace) -> int:
    target = target_env()
    os.environ.update(target)  # boto3 reads the endpoint and credentials from here
    env = {**os.environ, **target}
    if args.allow_hosts is not None:
        env["ITSACAT_ALLOW_HOSTS"] = check_allow_hosts(args.allow_hosts)
    service = chalicelib("service")
    errors = chalicelib("errors")
    try:
        service.configure(chalicelib("config").Settings.from_env(env))
    except ValueError as e:  # config.ConfigError
        raise UserError(str(e)) from e
    try:
        prediction = _predict(service, args.source)
    except errors.ApiError as e:
        if args.json:
            print(json.dumps(e.body()))
        raise UserError(f"{e.message} ({e.code})", exit_code=2 if e.status < 500 else 1) from e
    verdict: dict[str, Any] = prediction.verdict
    if args.json:
        print(json.dumps(verdict))
    else:
        model = verdict["model"]
        accuracy = model.get("test_accuracy")
        shown = f"{accuracy:.0%}" if isinstance(accuracy, int | float) else "unknown"
        print(
            f"{verdict['label']}  (probability of cat {verdict['probability']:.3f}; "
            f"model {model['run_id']}, test accuracy {shown})"
        )
    return 0


def _predict(service: ModuleType, source: str) -> Any:
    if "://" in source:
        return service.classify_url(source)
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{source}: no such file (give a picture's path or an http(s) URL)")
    limit = service.settings().max_body_bytes
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return service.classify_body(data, "application/octet-stream")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _local_main(argv: list[str]) -> int:
    """`python -m itsacat.commands.serve --host H --port P ...`: the server itself."""
    p = argparse.ArgumentParser(prog="itsacat-serve-local")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stage", default=LOCAL_STAGE)
    p.add_argument("--concurrency", type=_count, default=API_LIMITS.concurrency)
    p.add_argument("--rate", type=float, default=API_LIMITS.rate)
    p.add_argument("--burst", type=_count, default=API_LIMITS.burst)
    args = p.parse_args(argv)
    limits = ApiLimits(args.concurrency, args.rate, args.burst)
    run_local_server(args.host, args.port, args.stage, limits)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the prediction API locally (chalice local) against the current target",
        description=(
            "Run the prediction API with `chalice local`. Like the deployed API it refuses "
            "private and loopback addresses unless --allow-hosts lets them through."
        ),
    )
    p.add_argument(
        "--stage",
        choices=tuple(STAGE_PORTS),
        default="production",
        help="which model /image serves: production (default), or the staging candidate "
        "(/staging/image serves it on either)",
    )
    p.add_argument(
        "--port",
        type=int,
        help="port to listen on (default 8000 for production, 8080 for staging, like the "
        "original project's blue and green APIs)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument(
        "--allow-hosts",
        metavar="ADDR[,ADDR...]",
        help="addresses or networks (e.g. 127.0.0.2 or 10.0.0.0/8) that may be fetched "
        "although private or loopback",
    )
    p.add_argument(
        "--concurrency",
        type=_count,
        default=API_LIMITS.concurrency,
        help="requests in the app at once, beyond which 429 (as the deployed function's "
        "reserved concurrency; 0: no limit; default %(default)s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=API_LIMITS.rate,
        help="requests a second, beyond which 429 (as the deployed stage's throttle; "
        "0: no limit; default %(default)g)",
    )
    p.add_argument(
        "--burst",
        type=_count,
        default=API_LIMITS.burst,
        help="requests accepted at once by the rate limit (default %(default)s)",
    )
    p.set_defaults(func=serve)

    q = sub.add_parser(
        "predict",
        help="print the verdict on a picture (a file or an http(s) URL)",
        description="Classify one picture with the latest model, using the API's own code.",
    )
    q.add_argument("source", metavar="PATH_OR_URL", help="a picture file, or its http(s) URL")
    q.add_argument("--json", action="store_true", help="print the API's JSON answer")
    q.add_argument(
        "--allow-hosts",
        metavar="ADDR[,ADDR...]",
        help="addresses or networks a URL may resolve to although private or loopback",
    )
    q.set_defaults(func=predict)


if __name__ == "__main__":
    sys.exit(_local_main(sys.argv[1:]))
