"""Entry point of the `simpersona` command: imports each area's commands onto one app."""

from harness.cli_app import app
from harness import cli_codebook  # noqa: F401  (ingest, features, train-codebook, assign, demo)
from harness import cli_store  # noqa: F401  (serve-store)
from harness import cli_observe  # noqa: F401  (observe)
from harness import cli_simulate  # noqa: F401  (simulate)
from harness import cli_agent  # noqa: F401  (train-agent)
from harness import cli_ab  # noqa: F401  (ab: A/B and A/A what-if runs)
from harness import cli_replay  # noqa: F401  (make-traces)
from harness import cli_evaluate  # noqa: F401  (evaluate: held-out shops; report)

__all__ = ["app"]

if __name__ == "__main__":
    app()
