"""Starting a run the way a user does: put the dataset (and its parameters) in the bucket."""

import json
import time
from pathlib import Path

from itsacat.errors import UserError
from itsacat.runview import Runs
from state.errors import StateError
from state.objects import ObjectStore
from trainer_lambdas.nn.params import Parameters


def upload_dataset(env: dict[str, str], path: Path, params: Parameters) -> tuple[str, str]:
    """Upload under a fresh training_input/<name>-<time>/ folder; (run id, dataset key).

    Each upload gets its own folder so that its parameters.json sits beside it alone, and
    concurrent uploads cannot pick up each other's parameters.
    """
    objects = ObjectStore(env["ITSACAT_BUCKET"])
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**6:06d}"
    folder = f"training_input/{path.stem}-{stamp}"
    key = f"{folder}/{path.stem}.h5"
    try:
        body = path.read_bytes()
        objects.put(
            f"{folder}/parameters.json", json.dumps(params.to_json()).encode(), "application/json"
        )
        objects.put(key, body)
    except (StateError, OSError) as e:
        raise UserError(f"upload failed: {e}") from e
    return Runs(env).find_by_key(key, timeout_s=120), key
