"""The MLflow Model's code (models from code): MLflow runs this file to build the pyfunc, no pickle."""

import mlflow.models

from loaderlab.serving import ImageFileClassifier

mlflow.models.set_model(ImageFileClassifier())
