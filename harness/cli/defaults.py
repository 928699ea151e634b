"""Command-line defaults come from the config dataclasses: one home per default."""

from __future__ import annotations

from dataclasses import MISSING, fields


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
