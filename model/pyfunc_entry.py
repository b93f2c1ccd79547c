"""Models-from-code entry point MLflow executes when it loads the model (no pickled class)."""

from mlflow.models import set_model

from model.pyfunc import RiskModel

set_model(RiskModel())
