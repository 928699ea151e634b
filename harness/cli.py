"""Entry point of the `simpersona` command: imports each area's commands onto one app."""

from harness.cli_app import app
from harness import cli_codebook  # noqa: F401  (registers ingest, features, train-codebook, assign, demo)

__all__ = ["app"]

if __name__ == "__main__":
    app()
