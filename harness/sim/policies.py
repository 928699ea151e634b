"""The one way to turn a policy name into a policy, for every command and the Python API.

A PolicySpec names the policy as a user does on the command line:

    random                 agent.baselines.RandomPolicy
    type-profile           agent.baselines.TypeProfilePolicy over the codebook's types.json
    smollm2-zero-shot      SmolLM2-135M-Instruct (agent.models.load_smollm2) prompted with the same
                           observation, grammar and goal, without persona tokens or training: the
                           larger model the task benchmark compares the persona agent with
    AGENT_DIR              the persona agent written by `simpersona train-agent`, run in this process
    http(s)://ENDPOINT     the same agent served by an OpenAI-compatible server (`vllm serve
                           AGENT_DIR`); `agent_dir` then gives its tokenizer and persona.json

`build_policy(spec, codebook)` builds it. Every agent samples the same way wherever it runs
(simulate, ab, evaluate, Ray shards): at the temperature its agent dir records (chosen by
calibration on training shops, agent/persona.py) and under the persona guidance it records,
unless the spec's `temperature` or `guidance` overrides them, with the spec's `seed` mixed into
each buyer's own. An agent trained for another codebook is
refused by `check_policy` with an error naming both codebooks, before any buyer runs.

A spec is plain data (no live object), so a Ray worker can build the policy itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from codebook.artifact import CodebookArtifact
from harness.sim.rundir import same_policy

ZERO_SHOT_POLICY = "smollm2-zero-shot"
BASELINE_POLICIES = ("random", "type-profile", ZERO_SHOT_POLICY)
DEFAULT_POLICY = "type-profile"  # what the commands run when no --policy is given
ENDPOINT_SCHEMES = ("http://", "https://")
POLICY_CHOICES = f"random, type-profile, {ZERO_SHOT_POLICY}, an agent directory or an http(s):// endpoint URL"


@dataclass(frozen=True)
class PolicySpec:
    """Which policy drives the buyers, and how an agent samples.

    policy: random | type-profile | AGENT_DIR | http(s)://ENDPOINT.
    agent_dir: for an endpoint, the agent dir it serves (tokenizer, persona.json).
    temperature: sampling temperature of an agent; None: the one its agent dir records.
    guidance: persona guidance of an agent (agent.generate.GenerationSettings; 1: off); None: the
        one its agent dir records.
    seed: mixed with every buyer's own seed when an agent samples; commands pass their --seed.
    neutral: give every buyer the neutral persona token (the token ablation).
    endpoint_model: the model name the endpoint serves; None: the agent dir's path.
    device: where an agent dir's model runs in this process; None: CUDA when present, else CPU.
    precision: how an agent dir's model computes (agent.models.compute_dtypes): auto, bf16 or fp32.
    label: the policy's name in summaries; None: derived from the policy.
    """

    policy: str
    agent_dir: Path | None = None
    temperature: float | None = None
    guidance: float | None = None
    seed: int = 0
    neutral: bool = False
    endpoint_model: str | None = None
    device: str | None = None
    precision: str = "auto"
    label: str | None = None

    @property
    def is_endpoint(self) -> bool:
        return self.policy.startswith(ENDPOINT_SCHEMES)

    @property
    def is_agent(self) -> bool:
        return self.policy not in BASELINE_POLICIES

    @property
    def agent_source(self) -> Path | None:
        """The agent dir whose persona.json describes the agent (None for a baseline)."""
        if not self.is_agent:
            return None
        return Path(self.agent_dir) if self.is_endpoint and self.agent_dir is not None else Path(self.policy)

    @property
    def name(self) -> str:
        if self.label is not None:
            return self.label
        if not self.is_agent:
            return self.policy
        return ("endpoint" if self.is_endpoint else "agent") + ("-neutral" if self.neutral else "")

    def resolved(self) -> PolicySpec:
        """The same spec with absolute paths: a Ray worker may run in another directory."""
        if not self.is_agent:
            return self
        agent_dir = None if self.agent_dir is None else Path(self.agent_dir).resolve()
        policy = self.policy if self.is_endpoint else str(Path(self.policy).resolve())
        return replace(self, policy=policy, agent_dir=agent_dir)


def check_policy(spec: PolicySpec, codebook: CodebookArtifact) -> None:
    """Fail before any buyer runs when the spec cannot be built for this codebook.

    Reads only persona.json of an agent dir, so the driver of a Ray run checks cheaply what every
    worker will build.
    """
    from agent.llm_policy import checked_persona_map

    if spec.temperature is not None and spec.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {spec.temperature}")
    if spec.guidance is not None and spec.guidance <= 0:
        raise ValueError(f"persona guidance must be > 0 (1: off), got {spec.guidance}")
    if not spec.is_agent:
        return
    if spec.is_endpoint and (spec.agent_dir is None or not Path(spec.agent_dir).is_dir()):
        raise ValueError(f"policy endpoint {spec.policy} needs --agent-dir, the agent dir it serves "
                         f"(its tokenizer and persona.json); got {spec.agent_dir}")
    if not spec.is_endpoint and not Path(spec.policy).is_dir():
        raise ValueError(f"policy must be {POLICY_CHOICES}; {spec.policy!r} is none of these")
    checked_persona_map(spec.agent_source, codebook)


def build_policy(spec: PolicySpec, codebook: CodebookArtifact):
    """The live policy that `spec` names, for buyers of `codebook`'s types."""
    from agent.baselines import RandomPolicy, TypeProfilePolicy
    from agent.llm_policy import LLMPolicy

    check_policy(spec, codebook)
    if spec.policy == "random":
        return RandomPolicy()
    if spec.policy == "type-profile":
        return TypeProfilePolicy.from_codebook(codebook)
    if spec.policy == ZERO_SHOT_POLICY:
        from agent.models import load_smollm2

        return LLMPolicy.zero_shot(load_smollm2(), temperature=spec.temperature, seed=spec.seed, name=spec.name)
    sampling = dict(codebook=codebook, temperature=spec.temperature, guidance=spec.guidance, seed=spec.seed,
                    neutral=spec.neutral, name=spec.name)
    if spec.is_endpoint:
        return LLMPolicy.from_endpoint(spec.policy, spec.agent_dir, model=spec.endpoint_model, **sampling)
    return LLMPolicy.from_dir(spec.policy, device=spec.device, precision=spec.precision, **sampling)


def policy_record(policy) -> dict:
    """What a run's manifest says about its policy: the name and, for an agent, how it samples,
    which weights it runs (when loaded from an agent dir) and, when not in the weights' own dtype,
    the dtype it computes in."""
    record = {"name": getattr(policy, "name", type(policy).__name__)}
    generation = getattr(policy, "generation", None)
    if generation is not None:
        record.update(temperature=generation.temperature, seed=generation.seed, neutral=getattr(policy, "neutral", False))
        if generation.guidance != 1.0:  # unguided records stay as they were, so their runs stay resumable
            record["guidance"] = generation.guidance
            if generation.guidance_plausibility:
                record["guidance_plausibility"] = generation.guidance_plausibility
    if getattr(policy, "weights", ""):
        record["weights"] = policy.weights
    autocast = getattr(getattr(policy, "backend", None), "autocast", None)
    if autocast is not None:
        record["autocast"] = str(autocast).removeprefix("torch.")
    return record


def made_by(recorded: dict | None, policy) -> bool:
    """Whether a run whose manifest records `recorded` was made by `policy`: its policy_record,
    compared as a resume compares them (rundir.same_policy)."""
    return recorded is not None and same_policy(recorded, policy_record(policy))


def close_policy(policy) -> None:
    """Release what a policy holds (an endpoint's HTTP client); nothing for the others."""
    close = getattr(getattr(policy, "backend", None), "close", None)
    if close is not None:
        close()
