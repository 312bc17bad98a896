"""The file MLflow builds a logged PEP model from ("models from code": no pickled objects).

pep.tracking.runs.Tracker.log_model names it as the python_model; MLflow runs it when the model is
loaded, with the model's own copy of the `pep` package first on the path.
"""

from mlflow.models import set_model

from pep.tracking.model import PepPyfuncModel

set_model(PepPyfuncModel())
