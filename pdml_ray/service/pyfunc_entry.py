# The script MLflow runs to build the pyfunc ("models from code"): it only names the model.
import mlflow.models

from pdml_ray.service.pyfunc_model import SceneParserModel

mlflow.models.set_model(SceneParserModel())
