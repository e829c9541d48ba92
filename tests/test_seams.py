"""Where features meet: every pair of values across loader, model, strategy, source, bad-image policy
and ending appears in at least one case, each a tiny real run (32 px, 97 files, one epoch).

A combination that refuses by design (a bad file under on_bad_image=error, tfdata_service on a
bucket) passes when it refuses with its message; such a case counts only for the pairs it refuses
on, so every other pair is covered by a case that trains."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from conftest import CONF_DIR, compose_config
from helpers import free_ports, wait_for_health
from loaderlab import PROJECT_ROOT
from loaderlab.data.folder import folder_manifest
from loaderlab.utils.errors import ConfigError

pytestmark = pytest.mark.slow
pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
pytest.importorskip("moto", reason="moto[server] is in the dev extra")

DIMENSIONS = {
    "loader": ["inmemory", "generator", "sequence", "tfdata", "tfdata_service", "packed", "keras"],
    # mobilenetv3small: a BatchNorm backbone with its own rescaling (include_preprocessing), as
    # efficientnetv2b0 has, at a fifth of its cost per case. resnet50, vgg16 and the other families are
    # the same builder (models/backbone.py) with another yaml, each built in test_backbones.py (and
    # ResNet50's BatchNorm through both fine-tuning phases in test_recipe.py).
    "model": ["small_cnn", "mobilenetv3small"],
    "augment": ["none", "rrc", "layers"],  # flip is rrc's draw without the crop
    "resize": ["squash", "crop", "pad"],
    "strategy": ["default", "mirrored", "multiworker"],  # multiworker: one worker, in this process
    "source": ["folder", "csv", "s3"],
    "on_bad_image": ["error", "skip"],
    "ending": ["train", "eval", "served"],  # served: registered, then loaded in a fresh process
}
BAD_FILE = "zz-bad.jpg"  # one file that is not an image at all, in every source
BUCKET = "seams"


AUGMENT_REFUSALS = {
    "inmemory": "loader=inmemory decodes every image once",
    "tfdata_service": "tfdata_service",
    "keras": "loader=keras",
}


def refusal(case: dict[str, str]) -> tuple[set, str] | None:
    """(the pairs it shows, message pattern) of a combination that refuses by design, else None: the
    first refusal that a run meets (the config checks, then the loader, then the pass over the files)."""
    if case["augment"] == "rrc" and case["loader"] in AUGMENT_REFUSALS:
        return {(("loader", case["loader"]), ("augment", "rrc"))}, AUGMENT_REFUSALS[case["loader"]]
    if case["augment"] == "rrc" and case["strategy"] == "multiworker":
        return {(("augment", "rrc"), ("strategy", "multiworker"))}, "does not number epochs"
    if case["loader"] in ("tfdata_service", "keras") and case["source"] == "s3":
        return {(("loader", case["loader"]), ("source", "s3"))}, r"loader=tfdata"
    if case["on_bad_image"] == "error":
        pairs = {pair for pair in all_pairs(case) if ("on_bad_image", "error") in pair}
        return pairs, rf"Bad image '[^']*{BAD_FILE}'.*data.on_bad_image=skip"
    if case["loader"] == "keras" and case["resize"] == "pad":  # format=tf pads otherwise than the spec
        return {(("loader", "keras"), ("resize", "pad"))}, "loader.format=grain"
    return None


def all_pairs(case: dict[str, str]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
    return {((a, case[a]), (b, case[b])) for a, b in itertools.combinations(DIMENSIONS, 2)}


def exercised_pairs(case: dict[str, str]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
    """The pairs a case really runs: all of them, or for a refusal only those it shows."""
    refused = refusal(case)
    return all_pairs(case) if refused is None else refused[0]


def cost(case: dict[str, str]) -> int:
    """A rough price of a case, to break ties between equally covering ones: the keras.applications
    backbones and the endings that log or load a model take longest."""
    return 2 * (case["model"] != "small_cnn") + (case["ending"] != "train") - 2 * (refusal(case) is not None)


def pairwise(dimensions: dict[str, list[str]], seed: int = 0, tries: int = 60) -> list[dict[str, str]]:
    """Cases that together exercise every pair of values: greedy, each case seeded with the first
    pair still missing, the best of `tries` random fillings kept (the cheapest of equals)."""
    missing = {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(dimensions, 2)
        for va in dimensions[a]
        for vb in dimensions[b]
    }
    rng, cases = random.Random(seed), []
    while missing:
        (a, va), (b, vb) = min(missing)
        fillings = ({n: rng.choice(v) for n, v in dimensions.items()} | {a: va, b: vb} for _ in range(tries))
        case = max(fillings, key=lambda c: (len(exercised_pairs(c) & missing), -cost(c)))
        if not exercised_pairs(case) & missing:  # the seed pair only a refusal can show
            case = {n: v[0] for n, v in dimensions.items()} | {a: va, b: vb}
        missing -= exercised_pairs(case)
        cases.append(case)
    return cases


CASES = pairwise(DIMENSIONS, seed=8, tries=200)  # seed and tries: the fewest, cheapest cases found (39)
RESULTS: dict[int, dict] = {}  # case index -> what a served case left for the final checks
OUTCOMES: dict[int, str] = {}  # case index -> "passed in 5.2 s" (conftest prints the table at the end)


def case_id(case: dict[str, str]) -> str:
    return "-".join(case.values())


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path):
    """The tiny dataset plus one bad file: as a folder, as a CSV table, and in a bucket on moto's server."""
    import boto3

    from loaderlab.benchmark.object_store import DUMMY_CREDENTIALS, LatencyS3Server

    root = tmp_path_factory.mktemp("seams") / "images"
    shutil.copytree(tiny_root, root, ignore=shutil.ignore_patterns(".*"))
    (root / "disk" / BAD_FILE).write_bytes(b"not an image at all")
    files = sorted(p for p in root.rglob("*.jpg"))
    table = root.parent / "table.csv"
    rows = [f"images/{p.relative_to(root)},{p.parent.name}\n" for p in files]
    table.write_text("path,label\n" + "".join(rows))
    saved = {k: os.environ.get(k) for k in DUMMY_CREDENTIALS}
    os.environ.update(DUMMY_CREDENTIALS)
    with LatencyS3Server() as server:
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        for path in files:
            client.upload_file(str(path), BUCKET, f"images/{path.relative_to(root).as_posix()}")
        yield {
            "folder": ["data=folder", f"data.root={root}"],
            "csv": ["data=csv", f"data.csv={table}"],
            "s3": [
                "data=folder",
                f"data.root=s3://{BUCKET}/images",
                f"+data.storage_options={{endpoint_url: '{server.endpoint_url}'}}",
            ],
        }
        from loaderlab.data.storage import release_filesystems

        release_filesystems()  # else the server's keep-alive threads wait out their clients
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture(scope="module")
def data_service():
    """An in-process tf.data service dispatcher and worker on 127.0.0.1."""
    from loaderlab.data_service import start_dispatcher, start_worker

    dispatcher = start_dispatcher(0)
    worker = start_worker(dispatcher.target, 0)
    yield dispatcher.target
    worker.stop()
    dispatcher.stop()


@pytest.fixture(scope="module")
def seams_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('seams-mlflow') / 'mlflow.db'}"


def test_the_cases_cover_every_pair() -> None:
    missing = {
        ((a, va), (b, vb))
        for a, b in itertools.combinations(DIMENSIONS, 2)
        for va in DIMENSIONS[a]
        for vb in DIMENSIONS[b]
    }
    for case in CASES:
        missing -= exercised_pairs(case)
    assert not missing


def case_table() -> str:
    """The cases, what each is expected to do and, for those that ran, their outcome and time."""
    sizes = ", ".join(f"{k} ({len(v)})" for k, v in DIMENSIONS.items())
    widths = [max(len(k), *(len(v) for v in values)) for k, values in DIMENSIONS.items()]
    lines = [f"{len(CASES)} cases cover every pair of {sizes}"]
    header = "  ".join(k.ljust(w) for k, w in zip(DIMENSIONS, widths, strict=True))
    lines.append(f"  #  {header}  outcome")
    for i, case in enumerate(CASES):
        cells = "  ".join(v.ljust(w) for v, w in zip(case.values(), widths, strict=True))
        outcome = OUTCOMES.get(i, "not run")
        lines.append(f"{i:3d}  {cells}  {'refuses' if refusal(case) else 'trains'}: {outcome}")
    return "\n".join(lines)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id(c) for c in CASES])
def test_seam(index: int, sources, data_service: str, seams_store: str, tmp_path: Path) -> None:
    from loaderlab.training.run import train

    case, started = CASES[index], time.monotonic()
    OUTCOMES[index] = "failed"
    name = f"seam{index}"
    shared = [  # what eval.py is given too
        f"paths.outputs={tmp_path}",
        *sources[case["source"]],
        f"data.on_bad_image={case['on_bad_image']}",
        f"data.resize={case['resize']}",
        f"loader={case['loader']}",
        *([f"loader.dispatcher={data_service}"] if case["loader"] == "tfdata_service" else []),
        "batch.val=16",
        f"tracking.uri={seams_store}",
    ]
    cfg = compose_config(
        [
            *shared,
            f"model={case['model']}",
            f"augment={case['augment']}",
            f"strategy={case['strategy']}",
            "model.input_size=32",
            "trainer.epochs=1",
            "trainer.verbose=0",
            "batch.train=16",
            f"tracking.experiment={name}",
            # eval.py must find the model without the MLflow Model: only `served` logs one
            f"tracking.log_model={case['ending'] == 'served'}",
            *([f"tracking.register_as={name}"] if case["ending"] == "served" else []),
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    refused = refusal(case)
    client = MlflowClient(seams_store)
    if refused is not None:
        with pytest.raises(Exception, match=refused[1]) as error:
            train(cfg)
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        if isinstance(error.value, ConfigError):  # refused before the run opens
            assert runs == []
        else:  # met while the run reads its data or feeds: the run ends FAILED with the message
            assert runs[0].info.status == "FAILED"
        OUTCOMES[index] = f"refused as expected in {time.monotonic() - started:.1f} s"
        return
    train(cfg)
    run = client.search_runs([client.get_experiment_by_name(name).experiment_id])[0]
    assert run.info.status == "FINISHED", run.data.tags.get("error")
    metrics = run.data.metrics
    assert metrics["skipped_images"] == 1  # the bad file, whichever way the loader met it
    assert metrics["images_per_sec"] > 0 and metrics["peak_rss_mb"] > 0 and "val_loss" in metrics
    assert run.data.tags["loader"] == case["loader"] and run.data.tags["model"] == case["model"]
    if case["strategy"] != "default":  # mirrored and one-worker multiworker: one replica on a CPU
        assert run.data.params["strategy.replicas"] == "1" and run.data.params["batch.global_train"] == "16"
    if case["ending"] == "eval":
        accuracy = evaluate([*shared, f"eval.run_id={run.info.run_id}"], tmp_path)
        evaluation = client.search_runs(
            [run.info.experiment_id], filter_string="tags.role = 'evaluation'", max_results=1
        )[0]
        assert evaluation.info.status == "FINISHED"
        assert evaluation.data.tags["split_matches_source"] == "true"
        assert evaluation.data.metrics["eval_accuracy"] == pytest.approx(accuracy)
    if case["ending"] == "served":
        manifest = folder_manifest(str(Path(sources["folder"][1].split("=", 1)[1])))
        RESULTS[index] = {"model": f"models:/{name}/1", "paths": list(manifest.val.paths[:4])}
    OUTCOMES[index] = f"passed in {time.monotonic() - started:.1f} s"


def test_a_bad_file_met_in_the_test_split_is_counted(sources, seams_store: str, tmp_path: Path) -> None:
    """Test split x skip: a file that passes the start-up check but does not decode, met only when
    the best model is evaluated on the test split, is counted as test_skipped_images."""
    from loaderlab.training.run import train

    root = Path(sources["folder"][1].split("=", 1)[1])
    test_root = tmp_path / "test"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        (test_root / folder.name).mkdir(parents=True)
        for image in sorted(p for p in folder.glob("*.jpg") if p.name != BAD_FILE)[:3]:
            shutil.copy(image, test_root / folder.name / image.name)
    corrupt = test_root / "disk" / "zz-corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + bytes(200) + b"\xff\xd9")  # JPEG's first and last bytes
    cfg = compose_config([
        f"paths.outputs={tmp_path}", *sources["folder"], f"data.test_root={test_root}",
        "data.on_bad_image=skip", "model.input_size=32", "trainer.epochs=1", "trainer.verbose=0",
        "batch.train=16", "batch.val=16", f"tracking.uri={seams_store}", "tracking.experiment=test-skip",
        "tracking.log_model=false",
    ])  # fmt: skip
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    train(cfg)
    client = MlflowClient(seams_store)
    [run] = client.search_runs([client.get_experiment_by_name("test-skip").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["skipped_images"] == 1  # the training folder's bad file, at start-up
    assert run.data.metrics["test_skipped_images"] == 1  # the corrupt one, met in the test split
    assert "test_accuracy" in run.data.metrics


def evaluate(overrides: list[str], tmp_path: Path) -> float:
    """python src/eval.py with these overrides, composed in this process; returns the accuracy."""
    from loaderlab.training.eval_run import evaluate_run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "eval")
    return evaluate_run(cfg)


def test_registered_models_load_and_predict_in_a_fresh_process_without_the_source_tree(
    seams_store: str, tmp_path: Path
) -> None:
    """Every served case's model, VGG16's custom layer included, in a process that cannot import the
    project's src/: loaderlab comes from the model's own code folder."""
    served = dict(RESULTS)
    if not served:
        pytest.skip("no served case ran (run the whole module)")
    script = (
        "import json, sys\n"
        f"sys.path[:] = [p for p in sys.path if p and not p.startswith({str(PROJECT_ROOT)!r})]\n"
        "import mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "out = {}\n"
        "for index, case in json.loads(sys.argv[2]).items():\n"
        "    model = mlflow.pyfunc.load_model(case['model'])\n"
        "    rows = model.predict(pd.DataFrame({'path': case['paths']}))\n"
        "    import loaderlab\n"
        "    out[index] = {'rows': len(rows), 'classes': sorted(set(rows.class_name)),\n"
        "                  'loaderlab': loaderlab.__file__}\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, seams_store, json.dumps(served)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    for index, case in served.items():
        assert out[str(index)]["rows"] == len(case["paths"])
        assert not out[str(index)]["loaderlab"].startswith(str(PROJECT_ROOT))  # the model's own copy


def test_the_rest_server_scores_paths_and_names_a_missing_file(seams_store: str, tmp_path: Path) -> None:
    """`mlflow models serve` on 127.0.0.1, queried over HTTP: a backbone's model (its preprocessing a
    custom layer) where a served case had one."""
    served = [(i, r) for i, r in RESULTS.items() if CASES[i]["model"] != "small_cnn"] or list(RESULTS.items())
    if not served:
        pytest.skip("no served case ran (run the whole module)")
    _, case = served[0]
    (port,) = free_ports(1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": seams_store}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", case["model"], "--env-manager",
               "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = subprocess.Popen(command, env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, timeout_s=300, path="/ping", process=server)  # TF loads slowly
        status, answer = invoke(url, case["paths"])
        assert status == 200 and len(answer["predictions"]) == len(case["paths"])
        missing = str(tmp_path / "no-such-photo.jpg")
        status, answer = invoke(url, [case["paths"][0], missing])
        assert 400 <= status < 600 and "no-such-photo.jpg" in answer["message"]
        status, answer = invoke(url, case["paths"][:1])  # the server is still up
        assert status == 200 and len(answer["predictions"]) == 1
    finally:
        os.killpg(server.pid, 9)  # a test server: a graceful stop waits on idle keep-alive clients
        server.wait(timeout=60)


def invoke(url: str, paths: list[str]) -> tuple[int, dict]:
    """POST a dataframe_split of paths to /invocations; (HTTP status, JSON answer)."""
    body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[p] for p in paths]}}).encode()
    request = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
