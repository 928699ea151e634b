"""Has the agent learned each persona? Per code, the probability it gives its own training traces' action.

    .venv/bin/python scripts/persona_fit.py runs/tmall/seed2/paper [--traces-per-code 12]

For each code, up to N of its traces from the agent dir's traces.jsonl are scored with their own
persona token, teacher-forced: at the first product page (the step where a Tmall buyer either
leaves, saves or carts) and averaged over every step. A persona the agent has learned gives its
traces' actions a probability near 1. Near 0.5 on the product page, it buys about as often as it
leaves whatever its traces did: the held-out conversion of that type drifts towards the other
types'. Reads `WORK/agent` and `WORK/traces/traces.jsonl` as `simpersona evaluate` writes them.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.generate import score_answers
from agent.llm_policy import LLMPolicy
from agent.policy import BuyerTurn
from agent.traces import Trace, decision_index, read_traces


def action_probabilities(policy: LLMPolicy, trace: Trace) -> list[float]:
    """P(the trace's action | its observation, its history, its own persona) at every step."""
    actions = [step.action for step in trace.steps]
    turns = [BuyerTurn(0, trace.code, step.observation, actions[:index]) for index, step in enumerate(trace.steps)]
    scores = score_answers(policy.backend.model, policy.backend.tokenizer, policy.prompts(turns), actions)
    return [math.exp(score) for score in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="a protocol directory of `simpersona evaluate` (agent/, traces/)")
    parser.add_argument("--traces-per-code", type=int, default=12)
    args = parser.parse_args()
    policy = LLMPolicy.from_dir(args.work / "agent")
    by_code: dict[int, list[Trace]] = {}
    for trace in read_traces(args.work / "traces" / "traces.jsonl"):
        by_code.setdefault(trace.code, []).append(trace)

    table = Table(title=f"persona fit of {args.work / 'agent'} on its own training traces")
    for name in ("code", "traces", "converted", "P(action) on the product page", "P(action), every step"):
        table.add_column(name, justify="right")
    page_means = []
    for code in sorted(by_code):
        traces = by_code[code][: args.traces_per_code]
        on_page, every = [], []
        for trace in traces:
            probabilities = action_probabilities(policy, trace)
            every.extend(probabilities)
            try:
                on_page.append(probabilities[decision_index(trace)])
            except ValueError:  # a trace that never reached a product page
                pass
        page = sum(on_page) / len(on_page) if on_page else float("nan")
        page_means.append(page)
        converted = sum(t.converted for t in traces) / len(traces)
        table.add_row(str(code), str(len(traces)), f"{converted:.0%}", f"{page:.3f}", f"{sum(every) / len(every):.3f}")
    console = Console()
    console.print(table)
    known = [p for p in page_means if not math.isnan(p)]
    console.print(f"product page: mean over codes {sum(known) / len(known):.3f}, worst code {min(known):.3f}")


if __name__ == "__main__":
    main()
