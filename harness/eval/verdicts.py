"""Plain-language verdicts over a run's summaries: what the figures do and do not show.

Pure functions of the JSON summaries, each returning a list of one-line sentences; the demo prints
them and report.html shows them. They exist because a figure can look like a result when it is not
one: an A/B in which nobody converted has ΔCR 0 and p = 1, which reads as "no difference" but
means the run could not see any difference at all.

    ab_verdicts(ab_summary)            ab_summary.json of harness.sim.ab
    evaluation_verdicts(summary)       summary.json of harness.eval.evaluate ("protocols")
    type_check_verdicts(result)        one protocol's result: an agent kept although it fails its type check
    pure_type_verdicts(result)         one protocol's result: the type profile as the agent's ceiling
    strict_verdicts(result)            one strict-protocol result: the type oracle as the agent's yardstick
    simulation_verdicts(summary)       summary.json of one simulation run ("per_type")
"""

from __future__ import annotations

from harness.sim.ab import MIN_AB_CONVERSIONS
from harness.sim.paired import wilson_interval

AGENT = "persona"
BASELINES = ("global_rate", "type_profile")
# A buyer that ends at max-steps neither bought nor left: it got lost. When most buyers do, the
# agent does not find its way through the store and its conversion rate says little about types.
MAX_STEPS_MAJORITY = 0.5
# Under the strict protocol an agent that plays its types well reaches this share of its type
# oracle's alignment; the oracle, not the global rate, is what browse-only types allow.
STRICT_ORACLE_SHARE = 0.95


def _percent(rate: float) -> str:
    return f"{100 * rate:.1f} %"


def _arm_conversions(ab: dict, arm: str) -> int:
    """Buyers who converted in one arm (the rate is over the n paired buyers)."""
    return round(ab[f"conversion_{arm.lower()}"] * ab["n"])


def lost_buyers(outcomes: dict | None, buyers: int) -> str | None:
    """A sentence when most buyers ended at max-steps, else None."""
    lost = (outcomes or {}).get("max_steps", 0)
    if buyers and lost / buyers > MAX_STEPS_MAJORITY:
        return f"{lost} of {buyers} buyers ended at max-steps: the agent does not find its way through the store"
    return None


def ab_verdicts(ab: dict) -> list[str]:
    """The A/B's outcome, or that it tells nothing when (almost) nobody converted."""
    n, alpha = ab["n"], ab.get("alpha", 0.05)
    a, b = _arm_conversions(ab, "A"), _arm_conversions(ab, "B")
    counts = f"{a}/{n} converted in A ({ab['variants']['A']}), {b}/{n} in B ({ab['variants']['B']})"
    lines = []
    if a + b == 0:
        lines.append(f"A/B tells nothing: nobody converted in either arm ({counts}); "
                     "the layouts cannot be compared with this agent")
    elif a + b < MIN_AB_CONVERSIONS:
        lines.append(f"A/B tells almost nothing: only {a + b} conversions over both arms ({counts}); "
                     "too few for any difference to be detected")
    else:
        low, high = ab["ci"]
        effect = f"ΔCR {ab['delta']:+.3f} (CI {low:+.3f} … {high:+.3f}), McNemar p = {ab['p_value']:.3g}"
        if ab["p_value"] < alpha:
            better = "better" if ab["delta"] > 0 else "worse"
            lines.append(f"A/B: B converts {better} than A: {effect}; {counts}")
        else:
            lines.append(f"A/B: no significant difference at α = {alpha:g}: {effect}; {counts}")
        for arm, mine, other in (("A", a, b), ("B", b, a)):
            if mine == 0 and other >= MIN_AB_CONVERSIONS:
                lines.append(f"A/B arm {arm}: nobody converted on {ab['variants'][arm]} although {other} did on the other "
                             "layout: the agent may not get through that layout at all, so the effect measures the "
                             "agent more than a buyer's response")
    for arm, figures in sorted((ab.get("arms") or {}).items()):
        lost = lost_buyers(figures.get("outcomes"), n)
        if lost:
            lines.append(f"A/B arm {arm}: {lost}")
    return lines


def alignment_verdicts(result: dict, agent: str = AGENT) -> list[str]:
    """Whether the agent is ahead of or behind each baseline on conversion alignment."""
    policies = result.get("policies") or {}
    mine = (policies.get(agent) or {}).get("alignment")
    if mine is None:
        return []
    lines, ahead, level = [], [], []
    for baseline in BASELINES:
        theirs = (policies.get(baseline) or {}).get("alignment")
        if theirs is None:
            continue
        if round(mine, 3) == round(theirs, 3):
            level.append(baseline)
        elif mine < theirs:
            lines.append(f"the {agent} agent is BEHIND the {baseline} baseline on alignment ({mine:.3f} vs {theirs:.3f})")
        else:
            ahead.append(f"{baseline} {theirs:.3f}")
    if ahead:
        lines.append(f"the {agent} agent ({mine:.3f}) is ahead of " + ", ".join(ahead) + " on alignment")
    if level:
        lines.append(f"the {agent} agent ({mine:.3f}) is level with " + ", ".join(level) + " on alignment")
    return lines


def collapse_verdicts(result: dict, agent: str = AGENT) -> list[str]:
    """Held-out shops where the agent converts nobody although real buyers do, at a real rate that
    0 of N synthetic buyers rules out (above the Wilson interval of 0 / N: 0 of 100 buyers in a shop
    converting 2 % is chance, not collapse); most buyers lost."""
    rows = [row for row in result.get("shops") or [] if row.get("policy") == agent and row.get("sim_buyers")]
    lines = []
    for row in rows:
        if (row.get("sim_converted", 0) == 0 and row.get("real_converted", 0) > 0
                and row["cr_real"] > wilson_interval(0, row["sim_buyers"])[1]):
            lines.append(f"the {agent} agent collapsed in shop {row['shop']}: 0 of {row['sim_buyers']} buyers converted "
                         f"(real rate {_percent(row['cr_real'])})")
    buyers = sum(row["sim_buyers"] for row in rows)
    lost = sum((row.get("outcomes") or {}).get("max_steps", 0) for row in rows)
    sentence = lost_buyers({"max_steps": lost}, buyers)
    if sentence:
        lines.append(f"the {agent} agent collapsed over the held-out shops: {sentence}")
    return lines


def type_check_verdicts(result: dict, agent: str = AGENT) -> list[str]:
    """The agent failed its type check on the calibration (training) shops and was kept anyway."""
    reason = (result.get("calibration") or {}).get("kept_although")
    if not reason:
        return []
    return [f"the {agent} agent was kept although it fails its type check on the training shops' calibration "
            f"buyers: {reason}; its held-out conversion per type need not follow its traces"]


def pure_type_verdicts(result: dict, agent: str = AGENT) -> list[str]:
    """When every traced type converts at 0 % or 100 %, the type profile buys for exactly the buyers
    of buying types: the ceiling of an agent that follows its types, which can tie it, never pass
    it. Says so, with the held-out buyers whose agent acted against its type (every fold's added up)."""
    counts = buyers_against_type_of(result)
    if counts is None:
        return []
    return [f"every type converts at 0 % or 100 % in its traces, so the type_profile baseline buys for exactly the "
            f"buyers of buying types: an agent that follows its types can tie it, not pass it; the {agent} agent "
            f"acted against its type for {against_type_text(counts, ' held-out buyers')}"]


def buyers_against_type_of(result: dict) -> dict | None:
    """metrics.buyers_against_type of one split's agent check (counted from its per-type rows, so a
    results.json written before the check stored them counts too), or of every fold's added up."""
    from harness.eval.metrics import added_against_type, buyers_against_type

    if result.get("folds"):
        return added_against_type([fold.get("against_type") for fold in result["folds"]])
    check = result.get("agent_check")
    return buyers_against_type(check) if check and check.get("per_code") else None


def against_type_text(counts: dict | None, unit: str = "") -> str | None:
    """'4 of 44<unit>: 3 of buying types bought nothing (2 left a cart), 1 of a type that never buys bought'."""
    if counts is None:
        return None
    how = []
    if counts["missed"]:
        left = counts["left_a_cart"]
        how.append(f"{counts['missed']:,} of buying types bought nothing" + (f" ({left:,} left a cart)" if left else ""))
    if counts["bought"]:
        how.append(f"{counts['bought']:,} of a type that never buys bought")
    return f"{counts['missed'] + counts['bought']:,} of {counts['buyers']:,}{unit}" + (": " + ", ".join(how) if how else "")


def strict_verdicts(result: dict, agent: str = AGENT) -> list[str]:
    """Strict types carry no purchase, so the agent is judged by the share of its type oracle's
    alignment it reaches; says so, and when the oracle itself trails the global rate (then no
    simulation built on these types is expected to pass that rate)."""
    ratio = result.get("persona_vs_oracle")
    policies = result.get("policies") or {}
    oracle = (policies.get("type_oracle") or {}).get("alignment")
    if result.get("protocol") != "strict" or ratio is None or oracle is None:
        return []
    mine = policies[agent]["alignment"]
    verdict = "meets" if ratio >= STRICT_ORACLE_SHARE else "falls short of"
    lines = [f"the {agent} agent reaches {ratio:.3f} of its type oracle's alignment ({mine:.3f} vs {oracle:.3f}): it "
             f"{verdict} the strict protocol's goal of {STRICT_ORACLE_SHARE:g}"]
    global_rate = (policies.get("global_rate") or {}).get("alignment")
    if global_rate is not None and global_rate > oracle:
        lines.append(f"the type oracle itself trails the global_rate ({oracle:.3f} vs {global_rate:.3f}): browse-only "
                     "types do not tell these shops apart better than the average rate, so no simulation built on them "
                     "is expected to pass it")
    return lines


def evaluation_verdicts(summary: dict, agent: str = AGENT) -> list[str]:
    """Collapse, type-check, alignment and ceiling verdicts of every protocol (named when there are several)."""
    protocols = summary.get("protocols") or {}
    lines = []
    for name, result in protocols.items():
        prefix = f"{name}: " if len(protocols) > 1 else ""
        found = (collapse_verdicts(result, agent) + type_check_verdicts(result, agent) + alignment_verdicts(result, agent)
                 + pure_type_verdicts(result, agent) + strict_verdicts(result, agent))
        lines += [prefix + line for line in found]
    return lines


def simulation_verdicts(summary: dict) -> list[str]:
    """One simulation run: no conversions where real buyers of those types do convert; most buyers lost."""
    buyers = summary.get("completed") or 0
    lines = []
    if buyers and summary.get("converted", 0) == 0 and (summary.get("real_conversion_rate") or 0) > 0:
        lines.append(f"the agent collapsed: 0 of {buyers} buyers converted "
                     f"(real rate of these types {_percent(summary['real_conversion_rate'])})")
    lost = lost_buyers(summary.get("outcomes"), buyers)
    if lost:
        lines.append(lost)
    return lines
