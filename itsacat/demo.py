"""`itsacat demo`: the whole story on the embedded stack, from upload to approval.

Start the stack, find the dataset (`dataset_source`), drop it into the bucket, train with a
live progress bar, print the summary and write the report. The first model goes to
production (or, if the stack has one already, is promoted only if at least as good). A
second, shorter run lands in staging. Then serve both APIs, production (blue) and staging
(green), ask both about the sample pictures (served from 127.0.0.2, the one loopback address
the APIs are allowed to fetch), and promote the candidate only if it is at least as good.
"""

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedded import stack as embedded_stack
from itsacat import background, dataset_source, target
from itsacat.errors import UserError
from itsacat.inputs import load_params
from itsacat.runview import Runs
from itsacat.uploads import upload_dataset
from state.models import PRODUCTION, STAGING, ModelStore, PromotionConflict, PromotionRefused
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod

PICTURES_HOST = "127.0.0.2"
# The second run is this much shorter than the first: a candidate to compare, quickly.
SECOND_RUN_FRACTION = 5


@dataclass
class Options:
    dataset: str | None
    dataset_url: str | None  # where to download the cat data (None: the default)
    images: Path | None  # pictures to ask the APIs about (None: a few of the test set)
    epochs: int | None
    plan: str
    fanout: int
    commit_every: int | None  # None: the parameters' own
    port: int
    staging_port: int
    exit: bool
    out: Path


def say(text: str = "") -> None:
    print(text, flush=True)


PICTURE_SUFFIXES = (".jpeg", ".jpg", ".png")


def sample_pictures(path: Path, folder: Path, count: int = 4) -> tuple[Path, list[str]]:
    """The first `count` pictures of the dataset at `path`'s test set (else its training
    set), as 256x256 PNG files in `folder`; the folder and their file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.load(path)
    split = ds.test or ds.require_train()
    names = []
    for i in range(min(count, split.m)):
        name = f"sample{i}_{ds.classes[int(split.y[i])]}.png"
        Image.fromarray(split.x[i]).resize((256, 256)).save(folder / name)
        names.append(name)
    return folder, names


def pictures_in(folder: Path) -> tuple[Path, list[str]]:
    """The pictures in `folder` (a user's `--images`), by name; an error if there are none."""
    if not folder.is_dir():
        raise UserError(f"--images {folder}: no such folder")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)
    if not names:
        raise UserError(f"--images {folder}: no {'/'.join(PICTURE_SUFFIXES)} pictures in it")
    return folder, names


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def get_json(url: str, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def start_servers(
    env: dict[str, str], pictures: Path, ports: dict[str, int]
) -> tuple[dict[str, str], str]:
    """The APIs (chalice local), one for each stage in `ports`, and the picture server, in
    the background; the APIs' base URLs by stage, and the picture server's."""
    from itsacat.commands.serve import CHALICE_DIR, api_identity, server_command

    background.stop_all()  # a previous demo's servers
    base = dict(os.environ)
    pic_port = free_port(PICTURES_HOST)
    identity = api_identity(dict(env), env)
    apis = {}
    for stage, wanted in ports.items():
        port = wanted if wanted and port_free("127.0.0.1", wanted) else free_port("127.0.0.1")
        argv, api_env = server_command(
            port, "127.0.0.1", PICTURES_HOST, base, identity, model_stage=stage
        )
        # The API fetches from ports 80 and 443 only, unless told otherwise: the demo's
        # picture server listens on a free port of its own.
        api_env["ITSACAT_FETCH_PORTS"] = str(pic_port)
        name = "api" if stage == PRODUCTION else f"api-{stage}"
        background.start(name, argv, api_env, CHALICE_DIR, port=port)
        apis[stage] = f"http://127.0.0.1:{port}"
    background.start(
        "pictures",
        [
            sys.executable,
            "-m",
            "http.server",
            str(pic_port),
            "--bind",
            PICTURES_HOST,
            "--directory",
            str(pictures),
        ],
        base,
        pictures,
        port=pic_port,
    )
    for api in apis.values():
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = get_json(f"{api}/", timeout=2)
                if status == 200 and body.get("model"):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise UserError(
                    f"the API did not come up at {api} (see {embedded_stack.default_home()}/logs/)"
                )
            time.sleep(0.3)
    return apis, f"http://{PICTURES_HOST}:{pic_port}"


def train_once(env: dict[str, str], path: Path, params: params_mod.Parameters) -> dict[str, Any]:
    """Upload, train with a progress bar, print the outcome; the run's summary."""
    run_id, _ = upload_dataset(env, path, params)
    fans = (
        "layer 1 fans out"
        if params.distribution == params_mod.FIRST_LAYER_REMOTE
        else "every layer fans out"
    )
    say(
        f"   run {run_id}: {params.epochs} epochs, layers {list(params.neurons)}; plan "
        f"{params.distribution}: {fans}, up to {params.neurons_per_invocation} neuron(s) per "
        f"Lambda invocation, commit every {params.commit_every} step(s)"
    )
    runs = Runs(env)
    final = runs.wait(run_id, show=True)
    s = runs.summary(run_id)
    if final.status != "SUCCEEDED":
        raise UserError(f"run {run_id} ended {final.status}: {final.error}", exit_code=1)
    say(
        f"   epochs {s['epochs']}, final cost {s['final_cost']:.4f}, "
        f"train accuracy {s['train_accuracy']:.1%}, test accuracy {share(s['test_accuracy'])}"
    )
    say(
        f"   wall time {s['seconds']:.1f} s, Lambda invocations {s['counters']['invocations']}"
        f" (retries {s['counters']['retries']}, handovers {s['counters']['handovers']})"
    )
    return s


def share(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"


def stages(models: ModelStore) -> dict[str, str | None]:
    """The run id each stage's pointer names (None: empty)."""
    out = {}
    for stage in (PRODUCTION, STAGING):
        pointer = models.pointer(stage)
        out[stage] = pointer.run_id if pointer else None
    return out


def promote_if_not_worse(models: ModelStore, run_id: str) -> None:
    """Promote `run_id` unless its test accuracy is below production's, saying which."""
    try:
        done = models.promote(run_id)
    except (PromotionRefused, PromotionConflict) as e:
        say(f"   not promoted: {e}")
        return
    if done.changed:
        say(
            f"   promoted: {run_id} is production now (it replaces {done.previous}; "
            "`itsacat rollback` puts that back)"
        )


def run(opts: Options) -> int:
    """The demo; with `--exit`, everything it started is stopped, also when it fails."""
    try:
        return _run(opts)
    finally:
        if opts.exit:
            background.stop_all()
            embedded_stack.stop()


def _run(opts: Options) -> int:
    t0 = time.monotonic()
    home = embedded_stack.default_home()
    say("== 1. The embedded AWS stack (emulator + local Lambda runtime on 127.0.0.1)")
    env = target.embedded_env(start=True)
    target.use(env)
    say(f"   bucket {env['ITSACAT_BUCKET']}, functions {env['TRAINER_FUNCTION']}, ...")

    source = dataset_source.choose(
        opts.dataset, home, opts.dataset_url, lambda line: say(f"   {line}")
    )
    path = source.path
    params = load_params(
        None,
        epochs=opts.epochs,
        plan=opts.plan,
        fanout=opts.fanout,
        commit_every=opts.commit_every,
    )
    models = ModelStore(env["ITSACAT_BUCKET"])

    say(f"\n== 2. Upload {path} to s3://{env['ITSACAT_BUCKET']}/training_input/ (starts a run)")
    say("   training: each step fans out over the neuron function")
    first = train_once(env, path, params)
    run_id = first["run_id"]
    now = stages(models)
    if now[PRODUCTION] == run_id:
        say(f"   model {first['model_uri']}: the first model, so it went to production at once")
    else:
        say(
            f"   model {first['model_uri']}: in staging; production already held "
            f"{now[PRODUCTION]} (from an earlier demo)"
        )
        promote_if_not_worse(models, run_id)

    say("\n== 3. Report")
    from itsacat.report import Sources, make_report

    report = make_report(run_id, Sources.from_env(env), opts.out / run_id)
    say(f"   {report}")

    short = max(1, params.epochs // SECOND_RUN_FRACTION)
    say(f"\n== 4. A second, shorter run ({short} epochs): a candidate for production")
    second = train_once(env, path, params_mod.with_overrides(params, epochs=short))
    now = stages(models)
    say(
        f"   its model is in staging ({now[STAGING]}); production is still {now[PRODUCTION]}, "
        "until approved (the notification asked: `itsacat promote RUN`)"
    )

    say("\n== 5. The prediction APIs: production (blue) and staging (green), asked alike")
    pictures, names = (
        pictures_in(opts.images)
        if opts.images is not None
        else sample_pictures(path, home / "demo-pictures")
    )
    apis, pics = start_servers(env, pictures, {PRODUCTION: opts.port, STAGING: opts.staging_port})
    for stage, api in apis.items():
        say(f"   {stage:<10} API {api}/")
    say(f"   pictures served from {pics}/")
    say(f"   {'picture':<22} {'production':<28} staging")
    for name in names:
        url = urllib.parse.quote(f"{pics}/{urllib.parse.quote(name)}", safe="")
        verdicts = []
        for api in apis.values():
            status, body = get_json(f"{api}/image?image={url}")
            verdicts.append(
                f"{body['label']:<8} p(cat) = {body['probability']:.3f}"
                if status == 200
                else f"HTTP {status}: {body.get('code')}"
            )
        say(f"   {name:<22} {verdicts[0]:<28} {verdicts[1]}")
    refused = f"http://127.0.0.1:{urllib.parse.urlsplit(pics).port}/{names[0]}" if names else ""
    if refused:
        status, body = get_json(
            f"{apis[PRODUCTION]}/image?image={urllib.parse.quote(refused, safe='')}"
        )
        say(f"   and from 127.0.0.1 (not allowed): HTTP {status} {body.get('code')}")

    say("\n== 6. Approval: promote the candidate only if it is at least as good")
    production = models.current(PRODUCTION)
    held = production.metadata.get("test_accuracy") if production else None
    say(
        f"   candidate {second['run_id']}: test accuracy {share(second['test_accuracy'])}; "
        f"production {production.run_id if production else '-'}: {share(held)}"
    )
    promote_if_not_worse(models, second["run_id"])
    # The API re-reads the production pointer every few seconds (ITSACAT_MODEL_CHECK_SECONDS).
    expected = stages(models)[PRODUCTION]
    deadline = time.monotonic() + 15
    while True:
        status, body = get_json(f"{apis[PRODUCTION]}/model")
        if body.get("run_id") == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    say(f"   production now answers with {body.get('run_id')}")

    say(f"\nDone in {time.monotonic() - t0:.0f} s.")
    if opts.exit:
        say("Stopping the APIs, the picture server and the embedded stack (--exit).")
        return 0
    first_name = names[0] if names else "picture.jpeg"
    api = apis[PRODUCTION]
    say(f"""
Try next:
  curl '{api}/image?image={pics}/{first_name}'
  curl '{apis[STAGING]}/image?image={pics}/{first_name}'   # the staging candidate
  curl '{api}/image?image=http://169.254.169.254/latest/meta-data/'   # refused, 400
  .venv/bin/itsacat models              # which model is production, which staging
  .venv/bin/itsacat promote {second["run_id"]} --force   # then: itsacat rollback
  eval "$(.venv/bin/itsacat env)"       # point the AWS CLI at the stack
  .venv/bin/aws s3 cp {path} s3://$ITSACAT_BUCKET/training_input/again/datasets.h5
  .venv/bin/itsacat runs                # then: itsacat watch RUN
  .venv/bin/itsacat logs trainer --run {run_id}
The stack and the APIs keep running; stop everything with:  .venv/bin/itsacat down""")
    return 0
