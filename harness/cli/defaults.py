"""Command-line defaults come from the config dataclasses: one home per default. Lists of numbers
(candidate temperatures, codebook sizes) go in and out of the command line comma-separated."""

from __future__ import annotations

from dataclasses import MISSING, fields

import typer


def default_of(config_class: type, name: str):
    """The default of field `name` of a config dataclass (an error if it has none)."""
    for item in fields(config_class):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            if item.default_factory is not MISSING:
                return item.default_factory()
            raise ValueError(f"{config_class.__name__}.{name} has no default")
    raise ValueError(f"{config_class.__name__} has no field {name!r}")


def comma_joined(values: tuple) -> str:
    """A default list of numbers as an option takes it: 1,0.5."""
    return ",".join(f"{value:g}" for value in values)


def comma_numbers(text: str, kind: type, option: str, example: str) -> tuple:
    """The numbers of a comma-separated option value, or an error naming the option and an `example`."""
    try:
        return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{option}: expected numbers like {example}, got {text!r}") from None
