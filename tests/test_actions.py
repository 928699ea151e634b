"""The action grammar: strict about shape, tolerant of whitespace, errors meant for the agent."""

import pytest

from agent.actions import ACTION_SPECS, Action, ActionError, grammar_help, parse_action


@pytest.mark.parametrize(
    "line, expected",
    [
        ("click [3]", Action("click", 3)),
        ("  click[ 12 ]  ", Action("click", 12)),
        ('type [4] "red shoes"', Action("type", 4, "red shoes")),
        ('type [4] "say \\"hi\\""', Action("type", 4, 'say "hi"')),
        ('select [2]   "Price: low to high"', Action("select", 2, "Price: low to high")),
        ("scroll down", Action("scroll", text="down")),
        ("Scroll up", Action("scroll", text="up")),
        ("back", Action("back")),
        ("STOP", Action("stop")),
    ],
)
def test_valid_actions_parse(line, expected):
    assert parse_action(line) == expected


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("", "empty action"),
        ("jump [3]", "unknown action 'jump'"),
        ("click 3", "expected click [id]"),
        ("click [3] now", "expected click [id]"),
        ('type [3] red', 'expected type [id] "text"'),
        ("scroll left", "expected scroll up|down"),
        ("x" * 600, "longer than"),
    ],
)
def test_malformed_actions_name_what_was_expected(line, fragment):
    with pytest.raises(ActionError, match=None) as error:
        parse_action(line)
    assert fragment in str(error.value)


@pytest.mark.parametrize("action", [Action("click", 7), Action("type", 1, 'a "quoted" \\ text'),
                                    Action("select", 9, "XL"), Action("scroll", text="up"),
                                    Action("back"), Action("stop")])
def test_format_then_parse_round_trips(action):
    assert parse_action(str(action)) == action


def test_grammar_help_lists_every_action():
    help_text = grammar_help()
    assert all(spec.pattern in help_text for spec in ACTION_SPECS)
