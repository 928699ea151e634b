"""Entry point of the `simpersona` command: imports each area's commands onto one app."""

from harness.cli_app import app
from harness import cli_codebook  # noqa: F401  (ingest, features, train-codebook, assign, demo)
from harness import cli_store  # noqa: F401  (serve-store)
from harness import cli_observe  # noqa: F401  (observe)
from harness import cli_simulate  # noqa: F401  (simulate)
from harness import cli_agent  # noqa: F401  (train-agent)

__all__ = ["app"]

if __name__ == "__main__":
    app()
