"""Prompt building and output validation for the persona-token agent.

The prompt is the model's own chat template with:
- a short system line that starts with the persona token (the only persona information the model
  gets: the token, not a prompt, carries the buyer type),
- a user message with the current observation and the last few actions, ending with the persona
  token again: the decision is read right next to it, not across a page of text (a small model
  trained on a few hundred traces otherwise learns the average buyer and ignores the token),
and the answer is exactly one action line of the grammar (agent/actions.py).

A buyer given a task (`simpersona tasks`: "buy this product") also gets a `Goal:` line right
before the persona token, in the words of `buy_goal`; a free persona buyer's prompt has none.

Validation is strict: the first line of the model output must parse and, when it names an
element, that id must be one of the element lines of the observation (agent.page.parse reads
them). `candidate_actions` lists the id-bound and id-free actions that the constrained retry
chooses from.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.actions import Action, ActionError, expected_forms, parse_action
from agent.page import parse

DEFAULT_HISTORY_LENGTH = 4  # last actions shown; enough to see a loop, short enough for 135M models
DEFAULT_MAX_OBSERVATION_CHARS = 2500  # observations are cut (at a line) beyond this
ANSWER_TOKENS = 12  # room an example keeps for its answer (a click line and end of turn) under max_length
SYSTEM_TEMPLATE = "{token} You are this shopper in an online store. Reply with one action: {forms}"
HISTORY_LABEL = "\nLast actions:"  # where a prompt stops being shared by the buyers of a type on a page


@dataclass(frozen=True)
class PromptConfig:
    history_length: int = DEFAULT_HISTORY_LENGTH
    max_observation_chars: int = DEFAULT_MAX_OBSERVATION_CHARS


def shorten_observation(observation: str, max_chars: int) -> str:
    """Cut at a line boundary so no element line is half shown."""
    if len(observation) <= max_chars:
        return observation
    cut = observation.rfind("\n", 0, max_chars)
    return observation[: cut if cut > 0 else max_chars] + "\n…"


def buy_goal(title: str) -> str:
    """The task of a buyer sent to buy one product, as the prompt states it."""
    return f'buy "{title}"'


def build_messages(persona_token: str, observation: str, history: list[str], config: PromptConfig = PromptConfig(),
                   goal: str = "") -> list[dict]:
    recent = history[-config.history_length :] if config.history_length > 0 else []
    user = shorten_observation(observation, config.max_observation_chars)
    user += f"{HISTORY_LABEL} " + ("; ".join(recent) if recent else "none")
    if goal:
        user += f"\nGoal: {goal}"
    user += f"\nShopper: {persona_token}"
    system = SYSTEM_TEMPLATE.format(token=persona_token, forms=expected_forms())
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def render_prompt(tokenizer, persona_token: str, observation: str, history: list[str], config: PromptConfig = PromptConfig(),
                  goal: str = "") -> str:
    """The full prompt text, ending where the assistant's answer starts."""
    messages = build_messages(persona_token, observation, history, config, goal)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def opening_end_ids(tokenizer) -> tuple[int, ...]:
    """The token ids of HISTORY_LABEL: everything before their last occurrence in a prompt is the
    same for every buyer of that persona on that page (the prefix cache's unit, agent.generate)."""
    return tuple(tokenizer(HISTORY_LABEL, add_special_tokens=False).input_ids)


def prompt_budget(max_length: int | None) -> int | None:
    """The most prompt tokens an example of `max_length` tokens may have (None: no limit)."""
    return None if max_length is None else max_length - ANSWER_TOKENS


def fit_prompt(tokenizer, persona_token: str, observation: str, history: list[str], config: PromptConfig,
               max_tokens: int | None, goal: str = "") -> str:
    """render_prompt, with the observation cut shorter until the prompt has at most `max_tokens`
    tokens: the same rule in training (agent.sft) and at inference (agent.llm_policy), so the agent
    never sees a longer prompt than it was trained on. None: no limit."""
    return _fitted(tokenizer, persona_token, observation, history, config, max_tokens, goal)[0]


def fit_prompt_ids(tokenizer, persona_token: str, observation: str, history: list[str], config: PromptConfig,
                   max_tokens: int | None, goal: str = "") -> list[int]:
    """fit_prompt's token ids (training tokenizes every prompt once: the fit already measured it)."""
    prompt, ids = _fitted(tokenizer, persona_token, observation, history, config, max_tokens, goal)
    return ids if ids is not None else tokenizer(prompt, add_special_tokens=False).input_ids


def _fitted(tokenizer, persona_token, observation, history, config, max_tokens, goal) -> tuple[str, list[int] | None]:
    """The fitted prompt and its token ids where the fit measured them."""
    while True:
        prompt = render_prompt(tokenizer, persona_token, observation, history, config, goal)
        if max_tokens is None or config.max_observation_chars < 200:
            return prompt, None
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if len(ids) <= max_tokens:
            return prompt, ids
        config = PromptConfig(config.history_length, int(config.max_observation_chars * 0.75))


def answer_text(tokenizer, action: str) -> str:
    """What the model is trained to produce: the action line and the end-of-turn token."""
    return action.strip() + tokenizer.eos_token


def element_ids(observation: str) -> set[int]:
    """Ids of the "[id] role …" element lines of an observation (ids in page text are escaped)."""
    return {element.element_id for element in parse(observation).elements}


def validate_action(output: str, observation: str) -> Action:
    """Parse the first line of a model output and check its id is on the page; raise ActionError."""
    if not isinstance(output, str):
        raise ActionError(f"expected the model's text, got {type(output).__name__}")
    line = output.strip().split("\n", 1)[0]
    action = parse_action(line)
    if action.element_id is not None and action.element_id not in element_ids(observation):
        raise ActionError(f"element [{action.element_id}] is not on the page")
    return action


def candidate_actions(observation: str) -> list[str]:
    """Actions needing no free text: a click per element, scrolls, back, stop.

    Typed text and chosen options cannot be enumerated, so the constrained retry falls back to
    clicking rather than inventing a text.
    """
    ids = sorted(element_ids(observation))
    return [f"click [{element_id}]" for element_id in ids] + ["scroll down", "scroll up", "back", "stop"]


def is_valid(output: str, observation: str) -> bool:
    try:
        validate_action(output, observation)
    except ActionError:
        return False
    return True
