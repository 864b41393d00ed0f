"""What MLflow runs to load the served image-in model (models-from-code: no pickled code is unpickled)."""

from bloodml.tracking.pyfunc import set_model

from bloodml.serving.image_model import ImageModel

set_model(ImageModel())
