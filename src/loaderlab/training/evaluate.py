"""Evaluating a trained model on a split once: loss, accuracy and the confusion matrix, logged to a run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loaderlab.data.manifest import Split
from loaderlab.loaders.base import Loader
from loaderlab.loaders.decode import ImageDecoder
from loaderlab.run_log import RunLog


@dataclass
class Evaluation:
    """One pass of a model over a split."""

    loss: float
    accuracy: float
    confusion: np.ndarray  # [true class, predicted class] counts
    class_names: tuple[str, ...]

    def metrics(self, prefix: str) -> dict[str, float]:
        """{'<prefix>_loss': ..., '<prefix>_accuracy': ...}"""
        return {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy}


def evaluate(
    model: Any,
    loader: Loader,
    split: Split,
    decoder: ImageDecoder,
    batch_size: int,
    class_names: tuple[str, ...],
) -> Evaluation:
    """The model's predictions over the split, read by the run's own loader in manifest order."""
    labels, probs = [], []
    with loader.feed(split, decoder, batch_size, training=False) as feed:
        for images, batch_labels in _batches(feed):
            probs.append(model.predict_on_batch(images))
            labels.append(np.asarray(batch_labels))
    y, p = np.concatenate(labels), np.concatenate(probs).astype(np.float64)
    loss = float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1.0))))
    predicted = p.argmax(axis=1)
    confusion = np.zeros((len(class_names), len(class_names)), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    return Evaluation(loss, float(np.mean(predicted == y)), confusion, tuple(class_names))


def _batches(feed: Any):
    """(images, labels) batches of one pass over any loader's feed."""
    if feed.y is not None:
        for start in range(0, len(feed.y), feed.batch_size):
            yield feed.x[start : start + feed.batch_size], feed.y[start : start + feed.batch_size]
    elif feed.steps is not None:  # endless: a generator, or a tf.data.Dataset (packed's training feed)
        stream = iter(feed.x)
        for _ in range(feed.steps):
            images, labels = next(stream)[:2]
            yield np.asarray(images), np.asarray(labels)
    elif hasattr(feed.x, "__getitem__"):  # a PyDataset
        for index in range(len(feed.x)):
            yield feed.x[index][:2]
    else:  # a tf.data.Dataset
        for images, labels in feed.x:
            yield images.numpy(), labels.numpy()


def log_evaluation(run_log: RunLog, evaluation: Evaluation, folder: Path, prefix: str) -> None:
    """Metrics, and the confusion matrix as counts with class names (JSON) and as a picture (PNG)."""
    run_log.metrics(evaluation.metrics(prefix))
    folder.mkdir(parents=True, exist_ok=True)
    counts = folder / f"{prefix}_confusion_matrix.json"
    counts.write_text(
        json.dumps(
            {
                "class_names": list(evaluation.class_names),
                "rows": "true class",
                "columns": "predicted class",
                "counts": evaluation.confusion.tolist(),
            },
            indent=2,
        )
    )
    picture = folder / f"{prefix}_confusion_matrix.png"
    confusion_figure(evaluation, f"{prefix}: accuracy {evaluation.accuracy:.3f}").savefig(picture, dpi=120)
    run_log.artifact(counts)
    run_log.artifact(picture)


MAX_FIGURE_INCHES = 14.0  # the figure stops growing here; the JSON always holds the full matrix
MAX_LABELLED_CLASSES = 40  # beyond this, every n-th class is named
MAX_ANNOTATED_CLASSES = 20  # beyond this, the cells carry no count


def confusion_figure(evaluation: Evaluation, title: str) -> Any:
    """A matplotlib figure of the counts, true classes down, predicted across, of a bounded size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, counts = evaluation.class_names, evaluation.confusion
    size = min(1.8 + 0.6 * len(names), MAX_FIGURE_INCHES)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    axes.imshow(counts, cmap="Blues", interpolation="nearest")
    every = max(1, -(-len(names) // MAX_LABELLED_CLASSES))
    ticks = range(0, len(names), every)
    axes.set_xticks(ticks, [names[i] for i in ticks], rotation=45 if every == 1 else 90, ha="right")
    axes.set_yticks(ticks, [names[i] for i in ticks])
    axes.set_xlabel("predicted class" + (f" (every {every}th named)" if every > 1 else ""))
    axes.set_ylabel("true class")
    axes.set_title(title)
    if len(names) <= MAX_ANNOTATED_CLASSES:
        for (row, column), value in np.ndenumerate(counts):
            colour = "white" if value > counts.max() / 2 else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=colour)
    figure.tight_layout()
    plt.close(figure)
    return figure


def finish_model(
    cfg: Any, state_dir: Path, run_log: RunLog, loader: Loader, manifest: Any, decoder: ImageDecoder
) -> None:
    """After training: the best checkpoint evaluated once on the test split, and logged as an MLflow
    Model that reads image files (registered as tracking.register_as when set)."""
    import keras

    from loaderlab.models import register_all
    from loaderlab.serving import SPEC_FILE, write_facts

    best = state_dir / "checkpoints" / "best.keras"
    if not best.exists():  # no checkpoint callback (~callbacks.checkpoint), or no finished epoch
        return
    facts = write_facts(decoder.spec, manifest.class_names, best.parent / SPEC_FILE)
    if cfg.tracking.log_checkpoint:  # beside the checkpoint: eval.py reads it without the MLflow Model
        run_log.artifact(facts, "checkpoints")
    if manifest.test is not None:
        register_all()  # the models' custom layers: Keras does not import them itself
        model = keras.models.load_model(best)
        before = len(decoder.skipped)
        result = evaluate(model, loader, manifest.test, decoder, cfg.batch.val, manifest.class_names)
        log_evaluation(run_log, result, state_dir / "evaluation", "test")
        log_skipped(run_log, cfg.data.on_bad_image, dict(decoder.skipped[before:]), "test_skipped_images")
        keras.backend.clear_session()
    if cfg.tracking.get("log_model", True):
        from loaderlab.serving import save_image_model

        target = state_dir / "mlflow_model" / "model"
        if target.exists():  # a resumed run's earlier model: this one replaces it
            import shutil

            shutil.rmtree(target)
        save_image_model(best, facts, list(manifest.val.paths[:2]), target)
        run_log.artifact(target, "model")
        if cfg.tracking.get("register_as"):
            run_log.register_model("model", cfg.tracking.register_as)


def log_skipped(run_log: RunLog, on_bad_image: str, skipped: dict[str, str], name: str) -> None:
    """Under data.on_bad_image=skip: the count of what was left out as metric `name`, listed in name.tsv."""
    if on_bad_image != "skip":
        return
    run_log.metrics({name: float(len(skipped))})
    if skipped:
        run_log.text("".join(f"{path}\t{reason}\n" for path, reason in skipped.items()), f"{name}.tsv")
