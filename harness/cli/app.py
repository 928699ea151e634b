"""The shared Typer application; each area registers its commands in its own cli_*.py module."""

import typer

app = typer.Typer(
    name="simpersona",
    help="Simulate populations of online shoppers from buyer types learned on real clickstreams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
