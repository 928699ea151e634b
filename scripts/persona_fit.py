"""Has the agent learned each persona? Per code, the probability it gives its own training traces' action.

    .venv/bin/python scripts/persona_fit.py runs/tmall/seed2/paper [--traces-per-code 12]

For each code, up to N of its traces from the agent dir's traces.jsonl are scored with their own
persona token, teacher-forced: at the first product page (the step where a Tmall buyer either
leaves, saves or carts) and averaged over every step. A persona the agent has learned gives its
traces' actions a probability near 1. Near 0.5 on the product page, it buys about as often as it
leaves whatever its traces did: the held-out conversion of that type drifts towards the other
types'.

Held-out shops are pages the agent never saw. The last two columns ask whether a type's purchase
rate survives that: how often the code's traces open the buyers' path on the product page (the
action most converted traces take there, e.g. "click [10]", add to cart), and the probability the
agent gives that action on the same pages with the shop renamed (agent.traces.rename_shop, as
SFT's rename_shops uses it: the id replaced by another of the same form, the store's port changed).
A persona that generalises gives about its traces' share.
Reads `WORK/agent` and `WORK/traces/traces.jsonl` as `simpersona evaluate` writes them.
"""

from __future__ import annotations

import argparse
import math
import random
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

from agent.generate import score_answers
from agent.llm_policy import LLMPolicy
from agent.policy import BuyerTurn
from agent.traces import Trace, decision_index, read_traces, rename_shop


def action_probabilities(policy: LLMPolicy, trace: Trace) -> list[float]:
    """P(the trace's action | its observation, its history, its own persona) at every step."""
    actions = [step.action for step in trace.steps]
    turns = [BuyerTurn(0, trace.code, step.observation, actions[:index]) for index, step in enumerate(trace.steps)]
    scores = score_answers(policy.backend.model, policy.backend.tokenizer, policy.prompts(turns), actions,
                           policy.generation.suppressed_ids)
    return [math.exp(score) for score in scores]


def decision_action_probability(policy: LLMPolicy, trace: Trace, action: str, rng: random.Random) -> float:
    """P(action | the trace's product page with its shop renamed, the trace's history, its persona)."""
    index = decision_index(trace)
    renamed = rename_shop(trace, rng)
    turn = BuyerTurn(0, trace.code, renamed.steps[index].observation, [step.action for step in renamed.steps[:index]])
    return math.exp(score_answers(policy.backend.model, policy.backend.tokenizer, policy.prompts([turn]), [action],
                                  policy.generation.suppressed_ids)[0])


def buyers_first_action(traces: list[Trace]) -> str | None:
    """The product-page action most converted traces take (None without a converted trace)."""
    taken = Counter(t.steps[decision_index(t)].action for t in traces if t.converted and _has_decision(t))
    return taken.most_common(1)[0][0] if taken else None


def _has_decision(trace: Trace) -> bool:
    try:
        decision_index(trace)
        return True
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="a protocol directory of `simpersona evaluate` (agent/, traces/)")
    parser.add_argument("--traces-per-code", type=int, default=12)
    args = parser.parse_args()
    policy = LLMPolicy.from_dir(args.work / "agent")
    by_code: dict[int, list[Trace]] = {}
    for trace in read_traces(args.work / "traces" / "traces.jsonl"):
        by_code.setdefault(trace.code, []).append(trace)

    buy_action = buyers_first_action([t for traces in by_code.values() for t in traces])
    rng = random.Random(0)
    table = Table(title=f"persona fit of {args.work / 'agent'} on its own training traces "
                        f"(buyers' first action on the product page: {buy_action!r})")
    for name in ("code", "traces", "converted", "P(action) on the product page", "P(action), every step",
                 "traces taking the buyers' action", "P(buyers' action), shop renamed"):
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
        deciding = [t for t in traces if _has_decision(t)]
        took, renamed = "—", "—"
        if buy_action and deciding:
            took = f"{sum(t.steps[decision_index(t)].action == buy_action for t in deciding) / len(deciding):.0%}"
            renamed = f"{sum(decision_action_probability(policy, t, buy_action, rng) for t in deciding) / len(deciding):.3f}"
        table.add_row(str(code), str(len(traces)), f"{converted:.0%}", f"{page:.3f}", f"{sum(every) / len(every):.3f}",
                      took, renamed)
    console = Console()
    console.print(table)
    known = [p for p in page_means if not math.isnan(p)]
    console.print(f"product page: mean over codes {sum(known) / len(known):.3f}, worst code {min(known):.3f}")


if __name__ == "__main__":
    main()
