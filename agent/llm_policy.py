"""LLMPolicy: the persona-token agent behind the Policy protocol (agent/policy.py).

One `act` call renders every waiting buyer's prompt (persona token, observation, last actions) and
runs one batched generation. Each answer is validated against the grammar and the page's ids.
Rows that fail get one constrained retry, batched again: the output is restricted to the actions
that need no free text (`click [id]` for an id on the page, scrolls, back, stop), drawn at the
policy's temperature from the buyer's own random stream. A row
that still fails — e.g. an endpoint that was unreachable — gets the fallback action, logged as a
warning, never an exception.

An agent dir may record persona guidance (agent/persona.py Sampling, agent.generate): each prompt is
then generated beside the same prompt with the neutral token, the answer drawn from the persona's
log-probabilities pushed away from the neutral ones.

`decide` returns the details the harness logs per buyer (raw output, latency, tokens, whether the
retry or the fallback was used); `act` returns just the action lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.actions import ActionError
from agent.generate import GenerationSettings
from agent.models import Backend, check_endpoint_settings, load_endpoint, load_local, weights_digest
from agent.persona import PersonaMap
from codebook.artifact import CodebookArtifact
from agent.policy import BuyerTurn
from agent.prompt import PromptConfig, candidate_actions, fit_prompt, opening_end_ids, validate_action

log = logging.getLogger(__name__)
FALLBACK_ACTION = "scroll down"  # harmless on every page; the harness's step limit ends loops


def checked_persona_map(agent_dir: str | Path, codebook: CodebookArtifact | None) -> PersonaMap:
    """The agent dir's persona map, after checking it was trained for `codebook` (when given)."""
    persona_map = PersonaMap.load(agent_dir)
    if codebook is not None:
        persona_map.check_codebook(codebook, agent_dir)
    return persona_map


def sampling_settings(persona_map: PersonaMap, temperature: float | None, seed: int,
                      guidance: float | None = None) -> GenerationSettings:
    """The agent dir's recorded temperature and persona guidance unless given, and its guidance's
    plausibility bar; `seed` is mixed with each buyer's."""
    recorded = persona_map.sampling
    return GenerationSettings(temperature=recorded.temperature if temperature is None else temperature, seed=seed,
                              guidance=recorded.guidance if guidance is None else guidance,
                              guidance_plausibility=recorded.guidance_plausibility)


@dataclass
class Decision:
    action: str  # the validated action line sent to the harness
    raw_output: str  # what the model said first
    latency_s: float  # wall time of the generate call(s) this turn took part in
    prompt_tokens: int
    completion_tokens: int
    retried: bool = False
    fallback: bool = False
    error: str | None = None  # why the first answer (and the retry) was rejected


@dataclass
class LLMPolicy:
    backend: Backend
    persona_map: PersonaMap
    prompt_config: PromptConfig = PromptConfig()
    generation: GenerationSettings = GenerationSettings()
    neutral: bool = False  # ablation: every buyer gets the neutral token instead of its own
    fallback_action: str = FALLBACK_ACTION
    # Logits processors added to the free (first) pass only; for experiments and tests.
    first_pass_processors: list = field(default_factory=list)
    name: str = "llm"
    weights: str = ""  # agent/models.weights_digest of the agent dir it was loaded from ("" otherwise)

    def __post_init__(self) -> None:
        persona_ids = tuple(self.backend.tokenizer.convert_tokens_to_ids(token) for token in self.persona_map.tokens if token)
        self.generation = replace(self.generation, suppressed_ids=persona_ids,
                                  opening_end=opening_end_ids(self.backend.tokenizer))

    @classmethod
    def from_dir(cls, agent_dir: str | Path, codebook: CodebookArtifact | None = None, device: str | None = None,
                 temperature: float | None = None, seed: int = 0, precision: str = "auto",
                 guidance: float | None = None, **options) -> "LLMPolicy":
        """An agent dir written by `simpersona train-agent`, run in this process at `precision`
        (agent.models.compute_dtypes).

        It samples at the temperature and persona guidance its persona.json records unless given,
        and is refused (CodebookMismatchError) when `codebook` is not the one it was trained for.
        """
        persona_map = checked_persona_map(agent_dir, codebook)
        return cls(load_local(agent_dir, device=device, precision=precision), persona_map,
                   generation=sampling_settings(persona_map, temperature, seed, guidance), weights=weights_digest(agent_dir),
                   **options)

    @classmethod
    def zero_shot(cls, backend: Backend, temperature: float | None = None, seed: int = 0, **options) -> "LLMPolicy":
        """A model never trained on traces, prompted like the agent but with no persona token (every
        buyer is the same shopper): the baseline of the task benchmark. Greedy unless told otherwise."""
        no_personas = PersonaMap(0, {}, neutral="", init="none")
        settings = GenerationSettings(temperature=0.0 if temperature is None else temperature, seed=seed)
        return cls(backend, no_personas, generation=settings, neutral=True, **options)

    @classmethod
    def from_endpoint(cls, base_url: str, agent_dir: str | Path, codebook: CodebookArtifact | None = None,
                      model: str | None = None, temperature: float | None = None, seed: int = 0,
                      guidance: float | None = None, **options) -> "LLMPolicy":
        """The same agent served by an OpenAI-compatible server (`vllm serve AGENT_DIR`); agent_dir
        gives the tokenizer, the persona map and the sampling settings, as for from_dir. An endpoint
        returns answers, not the neutral prompt's log-probabilities, so it cannot sample under
        persona guidance: an agent dir that records one is refused unless `guidance` is 1."""
        persona_map = checked_persona_map(agent_dir, codebook)
        generation = sampling_settings(persona_map, temperature, seed, guidance)
        check_endpoint_settings(generation)  # before any buyer runs, not at its first step
        return cls(load_endpoint(base_url, agent_dir, model), persona_map, generation=generation, **options)

    def prompts(self, turns: list[BuyerTurn], neutral: bool = False) -> list[str]:
        return [
            fit_prompt(self.backend.tokenizer, self.persona_map.token_for(turn.code, self.neutral or neutral),
                       turn.observation, turn.history, self.prompt_config, self.persona_map.prompt_tokens, turn.goal)
            for turn in turns
        ]

    def contrast_prompts(self, turns: list[BuyerTurn]) -> list[str] | None:
        """The prompts with the neutral token that persona guidance draws against (None: unguided)."""
        return self.prompts(turns, neutral=True) if self.generation.guidance != 1.0 else None

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        return [decision.action for decision in self.decide(turns)]

    def decide(self, turns: list[BuyerTurn]) -> list[Decision]:
        if not turns:
            return []
        prompts, contrast = self.prompts(turns), self.contrast_prompts(turns)
        seeds = [turn.seed * 7919 + len(turn.history) for turn in turns]  # per buyer and per step
        first = self.backend.generate(prompts, self.generation, seeds, extra_processors=self.first_pass_processors,
                                      contrast_prompts=contrast)
        decisions = []
        for row, turn in enumerate(turns):
            decision = Decision(first.texts[row], first.texts[row], first.latency_s, first.prompt_tokens[row], first.completion_tokens[row])
            try:
                decision.action = str(validate_action(first.texts[row], turn.observation))
            except ActionError as error:
                decision.error = first.errors[row] or str(error)
            decisions.append(decision)
        failed = [row for row, decision in enumerate(decisions) if decision.error is not None]
        if failed:
            self._retry(turns, prompts, contrast, decisions, failed, seeds)
        return decisions

    def _retry(self, turns, prompts, contrast, decisions, failed, seeds) -> None:
        # Drawn like the first answer (same temperature and guidance, the buyer's own stream): a
        # greedy retry would send every buyer whose first answer failed down the one likeliest path.
        choices = [candidate_actions(turns[row].observation) for row in failed]
        retry = self.backend.generate([prompts[row] for row in failed], self.generation,
                                      [seeds[row] + 1 for row in failed], choices=choices,
                                      contrast_prompts=None if contrast is None else [contrast[row] for row in failed])
        for index, row in enumerate(failed):
            decision = decisions[row]
            decision.retried = True
            decision.latency_s += retry.latency_s
            decision.completion_tokens += retry.completion_tokens[index]
            try:
                decision.action = str(validate_action(retry.texts[index], turns[row].observation))
                continue
            except ActionError as error:
                decision.error = f"{decision.error}; retry: {retry.errors[index] or error}"
            decision.action, decision.fallback = self.fallback_action, True
            log.warning("buyer %d: no valid action (%s); falling back to %r", turns[row].buyer_index, decision.error, self.fallback_action)
