"""Using what was trained: a held-out test split, the MLflow Model that reads image files, eval.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY
from loaderlab import PROJECT_ROOT
from loaderlab.data.manifest import make_split
from loaderlab.data.synthetic import synthetic_manifest
from loaderlab.loaders import ImageDecoder, ImageSpec
from loaderlab.loaders.tfdata import TFDataLoader
from loaderlab.training.run import train
from test_train import latest_run

MODEL_NAME = "tiny-shapes"


def test_a_test_split_is_stratified_and_leaves_validation_as_it_was(tiny_root: Path) -> None:
    plain = synthetic_manifest(str(tiny_root), **TINY, progress=False)
    held = synthetic_manifest(str(tiny_root), **TINY, progress=False, test_fraction=0.2)
    assert held.val.paths == plain.val.paths
    assert plain.test is None and held.test is not None
    assert not set(held.test.paths) & (set(held.train.paths) | set(held.val.paths))
    assert sorted(held.train.paths + held.test.paths) == sorted(plain.train.paths)
    assert set(held.test.labels.tolist()) == set(range(TINY["num_classes"]))  # every class held out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_root: Path):
    """One run with a test split, its model registered: (config, run)."""
    from conftest import compose_config

    folder = tmp_path_factory.mktemp("model")
    cfg = compose_config(
        [
            f"paths.outputs={folder}",
            f"data.root={tiny_root}",
            *(f"data.{k}={v}" for k, v in TINY.items()),
            "data.test_fraction=0.2",
            "model.input_size=32",
            "trainer.epochs=2",
            "trainer.verbose=0",
            "batch.train=16",
            "batch.val=16",
            f"tracking.uri=sqlite:///{folder}/mlflow.db",
            f"tracking.register_as={MODEL_NAME}",
        ]
    )
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(folder / "run")
    train(cfg)
    return cfg, latest_run(cfg.tracking.uri, cfg.tracking.experiment)


def test_the_best_checkpoint_is_evaluated_once_on_the_test_split(trained, tmp_path: Path) -> None:
    cfg, run = trained
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    client = MlflowClient(cfg.tracking.uri)
    counts_file = client.download_artifacts(run.info.run_id, "test_confusion_matrix.json", str(tmp_path))
    counts = json.loads(Path(counts_file).read_text())
    matrix = np.array(counts["counts"])
    assert counts["class_names"] == ["disk", "plus", "square", "triangle"]
    held_out = synthetic_manifest(cfg.data.root, **TINY, progress=False, test_fraction=0.2).test
    assert matrix.sum() == len(held_out)
    assert matrix.sum(axis=1).tolist() == np.bincount(held_out.labels).tolist()  # true classes: the split's
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["test_accuracy"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"test_confusion_matrix.png", "model", "checkpoints"} <= names


def test_the_registered_model_reads_files_and_matches_keras_in_a_fresh_process(trained, tmp_path) -> None:
    import keras

    cfg, run = trained
    manifest = synthetic_manifest(cfg.data.root, **TINY, progress=False, test_fraction=0.2)
    files = list(manifest.test.paths[:5])
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL_NAME}/1')\n"
        "out = model.predict(pd.DataFrame({'path': json.loads(sys.argv[2])}))\n"
        "print(out.to_json(orient='records'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, cfg.tracking.uri, json.dumps(files)],
        capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    served = np.array([[row[f"prob_{n}"] for n in manifest.class_names] for row in rows])

    best = keras.models.load_model(Path(cfg.paths.output_dir) / "checkpoints" / "best.keras")
    split = make_split(files, manifest.test.labels[:5])
    images = np.concatenate([x for x, _ in TFDataLoader(deterministic=True).dataset(
        split, ImageDecoder(ImageSpec(32, 32, 3)), 8, training=False
    ).as_numpy_iterator()])  # fmt: skip
    expected = best.predict(images, verbose=0)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert [row["class_index"] for row in rows] == expected.argmax(axis=1).tolist()
    assert [row["class_name"] for row in rows] == [manifest.class_names[i] for i in expected.argmax(axis=1)]


def test_the_model_names_a_bad_file(trained, tmp_path: Path) -> None:
    import mlflow
    import pandas as pd

    cfg, run = trained
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=r"Bad image '.*broken.jpg': not a decodable image") as raised:
        model.predict(pd.DataFrame({"path": [str(bad)]}))
    assert raised.value.get_http_status_code() == 400  # the scoring server's answer: the caller's input


@pytest.mark.slow
def test_eval_py_logs_an_evaluation_run_linked_to_its_source(trained, tmp_path: Path) -> None:
    cfg, run = trained
    base = [
        sys.executable, str(PROJECT_ROOT / "src" / "eval.py"), f"eval.run_id={run.info.run_id}",
        f"paths.outputs={tmp_path}", f"tracking.uri={cfg.tracking.uri}", f"data.root={cfg.data.root}",
        *(f"data.{k}={v}" for k, v in TINY.items()), "data.test_fraction=0.2",
    ]  # fmt: skip
    done = subprocess.run([*base, "eval.split=test"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(cfg.tracking.uri)
    [evaluation] = client.search_runs(
        [run.info.experiment_id], f"tags.source_run_id = '{run.info.run_id}' and tags.role = 'evaluation'"
    )
    assert evaluation.info.status == "FINISHED"
    assert evaluation.data.tags["mlflow.parentRunId"] == run.info.run_id  # nested under it in the UI
    # The same images and checkpoint as the training run's own test pass: the same accuracy.
    assert evaluation.data.metrics["eval_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])


def test_the_confusion_figure_stays_bounded_with_a_thousand_classes(tmp_path: Path) -> None:
    """The figure stops growing and names only what fits; the JSON still holds every count."""
    from loaderlab.training.evaluate import MAX_FIGURE_INCHES, Evaluation, confusion_figure

    names = tuple(f"class{i:04d}" for i in range(1000))
    counts = np.diag(np.arange(1000) % 7)
    figure = confusion_figure(Evaluation(1.0, 0.5, counts, names), "test")
    assert max(figure.get_size_inches()) <= MAX_FIGURE_INCHES + 1
    figure.savefig(tmp_path / "confusion.png", dpi=120)
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert len(figure.axes[0].get_xticklabels()) <= 40 and not figure.axes[0].texts


def test_eval_refuses_another_split_naming_each_difference_unless_allowed(trained, tmp_path: Path) -> None:
    """Another split seed or fraction could put training images in what is scored: refused, unless
    eval.allow_other_split=true, which the evaluation run then records."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from conftest import CONF_DIR
    from loaderlab.training.eval_run import evaluate_run
    from loaderlab.validate import ConfigError

    cfg, run = trained

    def eval_cfg(*overrides: str):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            composed = compose("eval", overrides=[
                f"eval.run_id={run.info.run_id}", f"paths.outputs={tmp_path}",
                f"tracking.uri={cfg.tracking.uri}", f"data.root={cfg.data.root}",
                *(f"data.{k}={v}" for k, v in TINY.items()), *overrides,
            ])  # fmt: skip
        with open_dict(composed):
            composed.paths.output_dir = str(tmp_path / "eval")
        return composed

    with pytest.raises(ConfigError) as refused:
        evaluate_run(eval_cfg("data.split_seed=1", "data.val_fraction=0.3"))  # and test_fraction 0, not 0.2
    message = str(refused.value)
    differences = ("data.split_seed=0 (source)", "data.val_fraction=0.2 (source)", "data.test_fraction=0.2")
    assert all(d in message for d in differences), message
    assert "eval.allow_other_split=true" in message
    with pytest.raises(ConfigError, match=r"was trained on 32x32 images with 3 channel\(s\)"):
        evaluate_run(eval_cfg("data.test_fraction=0.2", "data.channels=1"))
    evaluate_run(eval_cfg("data.split_seed=1", "eval.allow_other_split=true"))
    client = MlflowClient(cfg.tracking.uri)
    [evaluation] = client.search_runs(
        [run.info.experiment_id], "tags.role = 'evaluation' and tags.split_matches_source = 'false'"
    )
    assert evaluation.info.status == "FINISHED"
