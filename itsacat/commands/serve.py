"""`itsacat serve` (the prediction API under `chalice local`) and `itsacat predict`.

Both run the same `chalice_app/chalicelib` code as the deployed API, against the current
target: the S3 endpoint and bucket come from `target_env()`, the one place that knows
where the target's variables come from.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from itsacat import target
from itsacat.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
CHALICE_DIR = ROOT / "chalice_app"
# The Chalice stage for local serving: it sets no environment variables, so the bucket
# and endpoint given here are the ones the app sees (stage variables would override them).
LOCAL_STAGE = "local"
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
) -> tuple[list[str], dict[str, str]]:
    """The `chalice local` command line and its environment (pure: nothing is run)."""
    chalice = Path(sys.executable).with_name("chalice")
    exe = str(chalice) if chalice.exists() else (shutil.which("chalice") or "chalice")
    env = {**base_env, **target}
    python_path = [str(ROOT), *filter(None, base_env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(python_path))
    if allow_hosts is not None:
        env["ITSACAT_ALLOW_HOSTS"] = allow_hosts
    argv = [
        exe,
        "local",
        "--host",
        host,
        "--port",
        str(port),
        "--stage",
        LOCAL_STAGE,
        "--no-autoreload",
    ]
    return argv, env


def serve(args: argparse.Namespace) -> int:
    allow = check_allow_hosts(args.allow_hosts) if args.allow_hosts is not None else None
    resolved = target.resolve()
    argv, env = server_command(args.port, args.host, allow, dict(os.environ), target_env(resolved))
    role = resolved.get("ITSACAT_API_ROLE_ARN")
    who = f"credentials of {role.rsplit('/', 1)[-1]}, " if role else ""
    if not env.get("ITSACAT_BUCKET"):
        print(
            "itsacat serve: warning: ITSACAT_BUCKET is not set; /image will answer 503",
            file=sys.stderr,
        )
    print(
        f"itsacat serve: http://{args.host}:{args.port}/ "
        f"(bucket {env.get('ITSACAT_BUCKET', '-')}, "
        f"S3 {env.get('AWS_ENDPOINT_URL', 'AWS')}, {who}"
        f"allowed private addresses: {env.get('ITSACAT_ALLOW_HOSTS') or 'none'})",
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
    limit = service.settings().max_bytes
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return service.classify_body(data, "application/octet-stream")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run the prediction API locally (chalice local) against the current target",
        description=(
            "Run the prediction API with `chalice local`. Like the deployed API it refuses "
            "private and loopback addresses unless --allow-hosts lets them through."
        ),
    )
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    p.add_argument(
        "--allow-hosts",
        metavar="ADDR[,ADDR...]",
        help="addresses or networks (e.g. 127.0.0.2 or 10.0.0.0/8) that may be fetched "
        "although private or loopback",
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
