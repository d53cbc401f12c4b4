"""MLflow tracking, the only package importing mlflow (docs/architecture.md, "MLflow layout"): experiment
`ism/<spec>`, a parent run per sweep, a child run per trial, all through an explicit MlflowClient (no global active
run, so several trials can log from one process or many). Three rooms: `connect` (the URI policy, health check,
client, retries, the `mlflow server` command of `ism ui`), `write` (experiments, runs, metrics, statuses) and `read`
(sweeps, child runs, histories, artifacts). Callers use this face: `from ism import tracking; tracking.client()`."""
from ism.tracking.connect import *  # noqa: F401,F403
from ism.tracking.connect import _retry  # noqa: F401  (tests/test_tracking.py exercises the retry policy)
from ism.tracking.read import *  # noqa: F401,F403
from ism.tracking.write import *  # noqa: F401,F403
