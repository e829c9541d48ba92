"""The trained model as an MLflow Model that reads image files: paths in, classes and probabilities out.

It decodes with the run's own spec through the shared decoder (scaled JPEG decode, RGB, bilinear
resize), so no user re-implements preprocessing at inference. The Keras model inside stays as it
was trained (artifact `keras_model`), for fine-tuning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd  # predict's type hint, which MLflow resolves; MLflow itself imports pandas

SPEC_FILE = "loaderlab_model.json"  # the spec and class names, beside the Keras model
PACKAGE_DIR = Path(__file__).resolve().parent  # shipped in the model (code_paths): no install needed
# What the pyfunc and the loaderlab code it ships import, each as its alternatives (the first one
# installed is pinned). Named here, so that MLflow does not infer them by loading the model in a
# subprocess at every run. The fsspec backends are pinned where installed: URL paths need them.
SERVING_PACKAGES = (
    ("mlflow", "mlflow-skinny"),
    ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"),
    ("keras",),
    ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    ("numpy",),
    ("pandas",),
    ("omegaconf",),
    ("psutil",),
    ("fsspec",),
    ("s3fs",),
    ("gcsfs",),
    ("adlfs",),
)


class ImageFileClassifier(mlflow.pyfunc.PythonModel):
    """A pyfunc whose input is a DataFrame with a `path` column (local paths or URLs)."""

    def load_context(self, context: Any) -> None:
        """Load the Keras model, the spec and the class names."""
        import keras

        from loaderlab.loaders.decode import ImageDecoder, ImageSpec
        from loaderlab.models import register_all

        register_all()  # the models' custom layers (FamilyPreprocess): Keras does not import them itself
        facts = json.loads(Path(context.artifacts["facts"]).read_text())
        self.class_names = list(facts["class_names"])
        self.decoder = ImageDecoder(ImageSpec(**facts["spec"]))
        self.model = keras.models.load_model(context.artifacts["keras_model"], compile=False)

    # A DataFrame hint: MLflow then infers no schema from hints (the logged signature gives it) and
    # does not warn that predict has none.
    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001
        """class_name, class_index and one prob_<class> column per class, a row per path."""
        import numpy as np
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from loaderlab.loaders.decode import BadImageError

        paths = [str(p) for p in model_input["path"]]
        probs = np.zeros((0, len(self.class_names)), np.float32)
        if paths:
            try:
                images, _ = self.decoder.batch(paths, np.zeros(len(paths), np.int32))
            except BadImageError as e:  # the scoring server answers 400 with this message, and stays up
                message = f"Bad image '{e.path}': {e.reason}."
                raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE) from e
            probs = np.asarray(self.model.predict_on_batch(images), np.float32)
        index = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        out = pd.DataFrame({"class_name": [self.class_names[i] for i in index], "class_index": index})
        for column, name in enumerate(self.class_names):
            out[f"prob_{name}"] = probs[:, column]
        return out


def write_facts(spec: Any, class_names: tuple[str, ...], target: Path) -> Path:
    """The decode spec and class names the model was trained with, as JSON at target."""
    spec_fields = spec.facts  # the resize mode and eval_crop too: the served model decodes as validation did
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"spec": spec_fields, "class_names": list(class_names)}))
    return target


def save_image_model(keras_file: Path, facts: Path, example_paths: list[str], target: Path) -> Path:
    """Write the MLflow Model (pyfunc, signature, input example, loaderlab's code) to `target`."""
    from mlflow.models import infer_signature

    from loaderlab.tracking import release_artifact_threads

    class_names = json.loads(facts.read_text())["class_names"]
    target.parent.mkdir(parents=True, exist_ok=True)
    example = pd.DataFrame({"path": example_paths})
    output = pd.DataFrame(
        {"class_name": [class_names[0]], "class_index": [0], **{f"prob_{n}": [0.0] for n in class_names}}
    ).astype({"class_index": "int64", **{f"prob_{n}": "float32" for n in class_names}})
    with warnings.catch_warnings():  # schema hints about integer columns and type hints: not ours
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=str(Path(__file__).with_name("serving_model.py")),  # code, not a pickle
            artifacts={"keras_model": str(keras_file), "facts": str(facts)},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=serving_requirements(),
            code_paths=[str(PACKAGE_DIR)],
        )
    release_artifact_threads()  # save_model copies the artifacts through a repository's pool
    return target


def serving_requirements() -> list[str]:
    """The installed version of each of SERVING_PACKAGES, pinned, as the model's pip requirements."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for alternatives in SERVING_PACKAGES:
        for package in alternatives:
            try:
                pinned.append(f"{package}=={version(package)}")
                break
            except PackageNotFoundError:  # e.g. fsspec's backends come with their extras only
                continue
    return pinned
