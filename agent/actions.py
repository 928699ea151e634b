"""The action grammar the agent speaks and the harness executes (DESIGN.md, "Observation and action").

    click [id]
    type [id] "text"        (the text is submitted with Enter)
    select [id] "option"
    scroll up | scroll down
    back
    stop

The grammar is data (ACTION_SPECS) so prompts, validators and docs are generated from one place.
Parsing is strict about the shape and tolerant of surrounding whitespace; anything else raises
ActionError with a message that the harness shows the agent in its next observation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ActionSpec:
    verb: str
    takes_id: bool
    takes_text: bool
    pattern: str  # how the action is written, for prompts and error messages
    meaning: str


ACTION_SPECS: tuple[ActionSpec, ...] = (
    ActionSpec("click", True, False, "click [id]", "click the element with that id"),
    ActionSpec("type", True, True, 'type [id] "text"', "type text into a field and press Enter"),
    ActionSpec("select", True, True, 'select [id] "option"', "choose an option of a drop-down"),
    ActionSpec("scroll", False, False, "scroll up|down", "scroll the page"),
    ActionSpec("back", False, False, "back", "go back to the previous page"),
    ActionSpec("stop", False, False, "stop", "leave the store"),
)
SPECS_BY_VERB = {spec.verb: spec for spec in ACTION_SPECS}
SCROLL_DIRECTIONS = ("up", "down")


@dataclass(frozen=True)
class Action:
    verb: str
    element_id: int | None = None
    text: str | None = None  # typed text, chosen option, or scroll direction

    def __str__(self) -> str:
        if self.verb == "scroll":
            return f"scroll {self.text}"
        if self.element_id is None:
            return self.verb
        if self.text is None:
            return f"{self.verb} [{self.element_id}]"
        escaped = self.text.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.verb} [{self.element_id}] "{escaped}"'


class ActionError(ValueError):
    """A malformed or unknown action; the message is meant for the agent to read."""


# ASCII digits only: `\d` would also take "١٢" (Arabic-Indic digits) and int() would read it as 12.
_ID = r"\[\s*([0-9]+)\s*\]"
_TEXT = r'"((?:[^"\\]|\\.)*)"'
_PATTERNS = {
    "click": re.compile(rf"click\s*{_ID}"),
    "type": re.compile(rf"type\s*{_ID}\s*{_TEXT}"),
    "select": re.compile(rf"select\s*{_ID}\s*{_TEXT}"),
    "scroll": re.compile(r"scroll\s+(up|down)"),
    "back": re.compile(r"back"),
    "stop": re.compile(r"stop"),
}
MAX_ACTION_CHARS = 500
MAX_ID_DIGITS = 9  # pages have hundreds of elements; a longer id is noise, not an element


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_action(line: str) -> Action:
    """Parse one action line; raise ActionError naming what was expected."""
    if not isinstance(line, str):
        raise ActionError(f"expected an action line, got {type(line).__name__}")
    stripped = line.strip()
    if not stripped:
        raise ActionError("empty action; expected one of: " + expected_forms())
    if len(stripped) > MAX_ACTION_CHARS:
        raise ActionError(f"action longer than {MAX_ACTION_CHARS} characters")
    written_verb = stripped.split(maxsplit=1)[0].split("[", 1)[0]
    verb = written_verb.lower()
    # ASCII only: "bac\u212a" (Kelvin sign) lower-cases to "back" but is not the word back.
    pattern = _PATTERNS.get(verb) if written_verb.isascii() else None
    if pattern is None:
        raise ActionError(f"unknown action {verb!r}; expected one of: " + expected_forms())
    # Verbs are case-insensitive; ids and quoted text are taken as written.
    match = pattern.fullmatch(verb + stripped[len(verb):])
    if match is None:
        raise ActionError(f"malformed {verb!r} action {stripped!r}; expected {SPECS_BY_VERB[verb].pattern}")
    groups = match.groups()
    if verb == "scroll":
        return Action("scroll", text=groups[0])
    if verb in ("back", "stop"):
        return Action(verb)
    if len(groups[0]) > MAX_ID_DIGITS:
        raise ActionError(f"element id {groups[0][:12]}… is too long; use an id from the list of elements")
    element_id = int(groups[0])
    text = _unescape(groups[1]) if len(groups) > 1 else None
    return Action(verb, element_id=element_id, text=text)


def expected_forms() -> str:
    return ", ".join(spec.pattern for spec in ACTION_SPECS)


def grammar_help() -> str:
    """One line per action, for prompts and `--help` texts."""
    return "\n".join(f"{spec.pattern:24} {spec.meaning}" for spec in ACTION_SPECS)
