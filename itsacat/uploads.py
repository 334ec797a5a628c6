"""Starting a run the way a user does: put the dataset (and its parameters) in the bucket."""

import json
import time
from pathlib import Path

from itsacat.errors import UserError
from itsacat.runview import Runs
from state.errors import StateError
from state.objects import ObjectStore
from trainer_lambdas import launcher
from trainer_lambdas.nn.params import Parameters

LAUNCH_TIMEOUT_S = 120  # how long the launch function may take to record the run


def run_id_of(bucket: str, key: str, version_id: str) -> str:
    """The id the launch function gives the run of this version of s3://bucket/key (the
    `VersionId` that put_object answered; a versioned bucket puts it in the S3 event)."""
    return launcher.run_id(bucket, key, version_id)


def upload_dataset(env: dict[str, str], path: Path, params: Parameters) -> tuple[str, str]:
    """Upload under a fresh training_input/<name>-<time>/ folder; (run id, dataset key),
    once the launch function has recorded the run.

    Each upload gets its own folder so that its parameters.json sits beside it alone, and
    concurrent uploads cannot pick up each other's parameters. The run id is the launch
    function's own (`launcher.run_id`), from the version S3 gave the dataset.
    """
    bucket = env["ITSACAT_BUCKET"]
    objects = ObjectStore(bucket)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**6:06d}"
    folder = f"training_input/{path.stem}-{stamp}"
    key = f"{folder}/{path.stem}.h5"
    try:
        body = path.read_bytes()
        objects.put(
            f"{folder}/parameters.json", json.dumps(params.to_json()).encode(), "application/json"
        )
        version = objects.put(key, body)
    except (StateError, OSError) as e:
        raise UserError(f"upload failed: {e}") from e
    if version is None:
        raise UserError(
            f"s3://{bucket} has no versioning, so the run of s3://{bucket}/{key} cannot be "
            "named; the stack's bucket has it (templates/template.yaml): is ITSACAT_BUCKET "
            "another bucket?"
        )
    run_id = run_id_of(bucket, key, version)
    Runs(env).wait_for_launch(run_id, key, timeout_s=LAUNCH_TIMEOUT_S)
    return run_id, key
