"""Entry point of the `simpersona` command: imports each area's commands onto one app."""

from harness.cli.app import app
from harness.cli import codebook  # noqa: F401  (ingest, features, train-codebook, assign, demo)
from harness.cli import store  # noqa: F401  (serve-store)
from harness.cli import observe  # noqa: F401  (observe)
from harness.cli import simulate  # noqa: F401  (simulate)
from harness.cli import agent  # noqa: F401  (train-agent)
from harness.cli import serve  # noqa: F401  (serve-agent)
from harness.cli import ab  # noqa: F401  (ab: A/B and A/A what-if runs)
from harness.cli import replay  # noqa: F401  (make-traces)
from harness.cli import evaluate  # noqa: F401  (evaluate: held-out shops; report; compare)
from harness.cli import sensitivity  # noqa: F401  (sensitivity: codebook size and commitment weight)
from harness.cli import tasks  # noqa: F401  (tasks: goal-oriented task benchmark)

__all__ = ["app"]

if __name__ == "__main__":
    app()
