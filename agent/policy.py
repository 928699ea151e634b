"""The Policy interface: one call decides the next action of every buyer that is waiting.

The harness collects the buyers whose page is ready and hands them over as one batch, so a model
policy runs one batched forward pass for all of them. Baselines and the LLM agent implement the
same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class BuyerTurn:
    """What a policy sees for one synthetic buyer at one step."""

    buyer_index: int          # position of the buyer in the run's population
    code: int                 # persona code (buyer type) from the codebook
    observation: str          # the observation text (DESIGN.md, "Observation and action")
    history: list[str] = field(default_factory=list)  # earlier action lines, oldest first
    seed: int = 0             # the buyer's own seed, so sampling is reproducible per buyer
    goal: str = ""            # a task the buyer is given (agent.prompt.buy_goal); "" for a free persona buyer


class Policy(Protocol):
    name: str

    def act(self, turns: list[BuyerTurn]) -> list[str]:
        """Return one action line per turn, in the same order."""
        ...
