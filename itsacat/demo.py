"""`itsacat demo`: the whole story on the embedded stack, from upload to prediction.

Start the stack, drop the dataset into the bucket, train with a live progress bar, print
the summary, write the report, serve the prediction API and ask it about the sample
pictures (served from 127.0.0.2, the one loopback address the API is allowed to fetch).
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
from itsacat import background, target
from itsacat.errors import UserError
from itsacat.inputs import load_params
from itsacat.runview import Runs
from itsacat.uploads import upload_dataset
from trainer_lambdas import datasets
from trainer_lambdas.nn import params as params_mod

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
PICTURES_HOST = "127.0.0.2"


@dataclass
class Options:
    dataset: str | None
    epochs: int | None
    plan: str
    fanout: int
    commit_every: int | None  # None: the parameters' own
    port: int
    exit: bool
    out: Path


def say(text: str = "") -> None:
    print(text, flush=True)


def choose_dataset(given: str | None, home: Path) -> tuple[Path, bool]:
    """(path, is_synthetic): the given file, the shared cat data, or a generated stand-in."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise UserError(f"DATASET={given}: no such file")
        return path, False
    real = SHARED_DATA / "datasets.h5"
    if real.is_file():
        return real, False
    path = home / "demo-data" / "synthetic.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.save(datasets.synthesize(), path)
    say(
        f"WARNING: {real} is not here, so the demo trains on a GENERATED stand-in dataset "
        "(coloured blobs, not cat photos): its accuracy says nothing about real cats. "
        "Run `make demo DATASET=/path/to/datasets.h5` with the real data."
    )
    return path, True


def sample_pictures(home: Path, synthetic: bool, path: Path) -> tuple[Path, list[str]]:
    """A folder of pictures to ask the API about, and their file names."""
    images = SHARED_DATA / "images"
    if not synthetic and images.is_dir():
        return images, sorted(p.name for p in images.iterdir() if p.suffix in (".jpeg", ".jpg"))
    from PIL import Image

    folder = home / "demo-pictures"
    folder.mkdir(parents=True, exist_ok=True)
    ds = datasets.load(path)
    split = ds.test or ds.require_train()
    names = []
    for i in range(min(4, split.m)):
        name = f"sample{i}_{ds.classes[int(split.y[i])]}.png"
        Image.fromarray(split.x[i]).resize((256, 256)).save(folder / name)
        names.append(name)
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


def start_servers(env: dict[str, str], pictures: Path, port: int) -> tuple[str, str]:
    """The API (chalice local) and the picture server, in the background; their base URLs."""
    from itsacat.commands.serve import CHALICE_DIR, api_identity, server_command

    background.stop_all()  # a previous demo's servers
    if port == 0 or not port_free("127.0.0.1", port):
        port = free_port("127.0.0.1")
    base = dict(os.environ)
    pic_port = free_port(PICTURES_HOST)
    argv, api_env = server_command(
        port, "127.0.0.1", PICTURES_HOST, base, api_identity(dict(env), env)
    )
    # The API fetches from ports 80 and 443 only, unless told otherwise: the demo's picture
    # server listens on a free port of its own.
    api_env["ITSACAT_FETCH_PORTS"] = str(pic_port)
    background.start("api", argv, api_env, CHALICE_DIR, port=port)
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
    api = f"http://127.0.0.1:{port}"
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
                f"the API did not come up at {api} (see {embedded_stack.default_home()}"
                "/logs/api.log)"
            )
        time.sleep(0.3)
    return api, f"http://{PICTURES_HOST}:{pic_port}"


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

    path, synthetic = choose_dataset(opts.dataset, home)
    params = load_params(None, epochs=opts.epochs)
    d = params.to_json()
    d.update(plan=opts.plan, fanout=opts.fanout)
    if opts.commit_every is not None:
        d["commit_every"] = opts.commit_every
    params = params_mod.parse(d)
    say(f"\n== 2. Upload {path} to s3://{env['ITSACAT_BUCKET']}/training_input/ (starts a run)")
    run_id, _ = upload_dataset(env, path, params)
    fans = "layer 1 fans out" if params.plan == "hybrid" else "every layer fans out"
    say(
        f"   run {run_id}: {params.epochs} epochs, layers {list(params.neurons)}; plan "
        f"{params.plan}: {fans}, up to {params.fanout} neuron(s) per Lambda invocation, "
        f"commit every {params.commit_every} step(s)"
    )

    say("\n== 3. Training (each step fans out over the neuron function)")
    runs = Runs(env)
    final = runs.wait(run_id, show=True)
    s = runs.summary(run_id)
    if final.status != "SUCCEEDED":
        raise UserError(f"run {run_id} ended {final.status}: {final.error}", exit_code=1)
    test = "n/a" if s["test_accuracy"] is None else f"{s['test_accuracy']:.1%}"
    say(
        f"   epochs {s['epochs']}, final cost {s['final_cost']:.4f}, "
        f"train accuracy {s['train_accuracy']:.1%}, test accuracy {test}"
    )
    say(
        f"   wall time {s['seconds']:.1f} s, Lambda invocations {s['counters']['invocations']}"
        f" (retries {s['counters']['retries']}, handovers {s['counters']['handovers']})"
    )
    say(f"   model {s['model_uri']}")

    say("\n== 4. Report")
    from itsacat.report import Sources, make_report

    report = make_report(run_id, Sources.from_env(env), opts.out / run_id)
    say(f"   {report}")

    say("\n== 5. The prediction API (chalice local), asked about sample pictures")
    pictures, names = sample_pictures(home, synthetic, path)
    api, pics = start_servers(env, pictures, opts.port)
    say(f"   API {api}/  (pictures served from {pics}/)")
    for name in names:
        url = f"{pics}/{urllib.parse.quote(name)}"
        status, body = get_json(f"{api}/image?image={urllib.parse.quote(url, safe='')}")
        verdict = (
            f"{body['label']:<8} (p(cat) = {body['probability']:.3f})"
            if status == 200
            else f"HTTP {status}: {body}"
        )
        say(f"   {name:<22} {verdict}")
    refused = f"http://127.0.0.1:{urllib.parse.urlsplit(pics).port}/{names[0]}" if names else ""
    if refused:
        status, body = get_json(f"{api}/image?image={urllib.parse.quote(refused, safe='')}")
        say(f"   and from 127.0.0.1 (not allowed): HTTP {status} {body.get('code')}")

    say(f"\nDone in {time.monotonic() - t0:.0f} s.")
    if opts.exit:
        say("Stopping the API, the picture server and the embedded stack (--exit).")
        return 0
    first = names[0] if names else "picture.jpeg"
    say(f"""
Try next:
  curl '{api}/image?image={pics}/{first}'
  curl '{api}/image?image=http://169.254.169.254/latest/meta-data/'   # refused, 400
  eval "$(.venv/bin/itsacat env)"       # point the AWS CLI at the stack
  .venv/bin/aws s3 ls s3://$ITSACAT_BUCKET/models/{run_id}/
  .venv/bin/aws s3 cp {path} s3://$ITSACAT_BUCKET/training_input/again/datasets.h5
  .venv/bin/itsacat runs                # then: itsacat watch RUN
  .venv/bin/itsacat logs trainer --run {run_id}
The stack and the API keep running; stop everything with:  .venv/bin/itsacat down""")
    return 0
