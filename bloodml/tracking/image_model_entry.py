"""What MLflow runs to load the served image-in model (models-from-code: no pickled code is unpickled)."""

from mlflow.models import set_model

from bloodml.tracking.image_model import ImageModel

set_model(ImageModel())
