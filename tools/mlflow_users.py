"""Create (or keep) a user of an MLflow tracking server that runs the basic-auth app.

    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... python tools/mlflow_users.py URL NAME PASSWORD_FILE

The admin's credentials come from the environment and the new user's password from a file, so no password is on
a command line. Permissions: the server's default_permission (READ in tools/services.sh) everywhere; a user owns
(MANAGE) the experiments and registered models it creates. Grant more with MLflow's AuthServiceClient, e.g.
``create_experiment_permission(experiment_id, NAME, "EDIT")`` or ``create_registered_model_permission(model,
NAME, "EDIT")`` (registering versions and moving aliases need EDIT on the registered model).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient


def main() -> int:
    url, name, password_file = sys.argv[1:4]
    client = AuthServiceClient(url)
    try:
        client.create_user(name, Path(password_file).read_text().strip())
    except MlflowException as exc:
        if "already exists" not in str(exc) and exc.error_code != "RESOURCE_ALREADY_EXISTS":
            print(f"could not create user {name}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
