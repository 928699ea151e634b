"""Cross-validation over shops: the per-fold results of a held-out evaluation pooled into one.

With `simpersona evaluate --folds K` every eligible shop is held out exactly once (harness.eval.split
deals them into K merchant-disjoint folds), and each fold learns its codebook, traces and agent from
the other shops only. Each fold writes its own results.json (harness.eval.evaluate.run_protocol);
this module reads nothing from disk: it pools those results into the same shape, so the report
and the CLI table read a pooled result like a single split's, plus a `folds` list with what each
fold chose (its temperature) and how its agent followed its types. With `--seeds S` the pooled
headline of each seed is kept with its interval over shops and summarised as mean ± sd.

Per-type figures (funnels, agent vs traces) stay per fold: each fold has its own codebook, so code 3
of one fold is not code 3 of another.
"""

from __future__ import annotations

import numpy as np

from harness.eval.phases import pooled_phases


def pool_folds(results: list[dict], seed: int, figures) -> dict:
    """One protocol's fold results pooled: every shop row once, the policy figures over all shops
    (`figures` = harness.eval.evaluate.policy_figures), the type-mix distances, a line per fold."""
    rows = [{**row, "fold": fold} for fold, result in enumerate(results) for row in result["shops"]]
    shops = {shop: mix for result in results for shop, mix in (result.get("type_mix") or {}).get("shops", {}).items()}
    first = results[0]
    return {
        "protocol": first["protocol"],
        "held_out_shops": [shop for result in results for shop in result["held_out_shops"]],
        "buyers_per_shop": {shop: n for result in results for shop, n in result["buyers_per_shop"].items()},
        "training_buyers": [result["training_buyers"] for result in results],
        "training_conversion_rate": float(np.mean([result["training_conversion_rate"] for result in results])),
        "people_overlap": float(np.mean([result.get("people_overlap") or 0.0 for result in results])),
        **figures(rows, seed),
        "type_mix": {"mean_jsd": float(np.mean([m["jsd"] for m in shops.values()])) if shops else None, "shops": shops},
        "per_type": None,
        "type_distances": pooled_type_distances([result.get("type_distances") for result in results]),
        "real_per_type": None,
        "agent_check": None,
        "browser_check": first.get("browser_check"),
        "transfer": pooled_transfer([result.get("transfer") for result in results]),
        "folds": [fold_line(fold, result) for fold, result in enumerate(results)],
        "shops": rows,
        "phases": pooled_phases([result.get("phases") or {} for result in results]),
    }


def pooled_type_distances(per_fold: list[dict | None]) -> dict | None:
    """Every fold's per-type behaviour distances (each fold has its own codebook, so a code is a
    type of one fold only): the entries side by side, the summary over all of them."""
    from harness.eval.metrics import behaviour_summary

    entries = {f"fold{fold}:{code}": entry for fold, distances in enumerate(per_fold) if distances
               for code, entry in distances["codes"].items()}
    return {"codes": entries, "summary": behaviour_summary(list(entries.values()))} if entries else None


def pooled_transfer(transfers: list[dict | None]) -> dict:
    """Per transfer store, every fold's shops in one table and the per-type counts added up."""
    pooled: dict[str, dict] = {}
    for transfer in transfers:
        for store, result in (transfer or {}).items():
            entry = pooled.setdefault(store, {"shops": [], "per_type": {}})
            entry["shops"] += result["shops"]
            for code, counts in result["per_type"].items():
                totals = entry["per_type"].setdefault(code, dict.fromkeys(counts, 0))
                for key, value in counts.items():
                    totals[key] += value
    return pooled


def rejected_gaps(agent: dict) -> str:
    """'type gap / worst type / conversion gap' of an agent set aside (evaluate.rejected_agent_record)."""
    from harness.eval.evaluate import chosen_conversion_gap

    conversion = chosen_conversion_gap(agent)
    return (f"{agent['type_gap']:.3f} / {agent['worst_type']['gap']:.2f} / "
            + ("—" if conversion is None else f"{conversion:.2f}"))


def fold_line(fold: int, result: dict) -> dict:
    """What one fold chose and reached: its shops, temperature, persona and oracle alignment, and
    how closely its agent's per-type conversion follows its traces (Pearson over codes)."""
    from harness.eval.evaluate import chosen_candidate, chosen_conversion_gap

    policies = result["policies"]
    calibration = result.get("calibration") or {}
    viewed = (chosen_candidate(calibration).get("strata") or {}).get("viewed") if calibration.get("tried") else None
    return {
        "fold": fold,
        "held_out": len(result["held_out_shops"]),
        "temperature": result.get("temperature"),
        "plausibility": calibration.get("chosen_plausibility"),  # of the persona guidance; 0: every token pushed
        # the share of the calibration buyers who viewed a product, the agent's / the real ones'
        "calibration_viewed": f"{viewed['sim']:.3f} / {viewed['real']:.3f}" if viewed and viewed["real"] is not None else None,
        "calibration_shops": len(calibration.get("shops") or []),
        # the chosen temperature's per-type gap on the calibration buyers (beyond sampling), its
        # worst type's gap, its conversion gap, and the three of each agent set aside for not following its types
        # (evaluate.checked_persona_agent)
        "calibration_type_gap": calibration.get("type_gap"),
        "worst_type_gap": (calibration.get("worst_type") or {}).get("gap"),
        "calibration_conversion_gap": chosen_conversion_gap(calibration),
        "rejected_agents": ", ".join(rejected_gaps(agent) for agent in calibration.get("rejected", [])) or None,
        "persona": (policies.get("persona") or {}).get("alignment"),
        "type_oracle": (policies.get("type_oracle") or {}).get("alignment"),
        "persona_vs_oracle": result.get("persona_vs_oracle"),
        "per_type_pearson": (result.get("agent_check") or {}).get("pearson"),
        # types converting at 0 % or 100 % only: the held-out buyers whose agent acted against its type
        "against_type": (result.get("agent_check") or {}).get("against_type"),
        "people_overlap": result.get("people_overlap"),
    }


def seed_spread(pooled: dict[int, dict[str, dict]]) -> dict:
    """Per protocol and policy, each seed's headline alignment with its interval over shops, and
    their mean ± sd (ddof 1). `pooled`: seed → protocol → the seed's (pooled) result."""
    spread: dict = {}
    for seed, protocols in pooled.items():
        for protocol, result in protocols.items():
            for policy, figures in result["policies"].items():
                entry = spread.setdefault(protocol, {}).setdefault(policy, {"per_seed": {}, "per_seed_ci": {}})
                entry["per_seed"][str(seed)] = figures.get("alignment")
                entry["per_seed_ci"][str(seed)] = figures.get("alignment_ci")
    for policies in spread.values():
        for entry in policies.values():
            values = [v for v in entry["per_seed"].values() if v is not None]
            entry["mean"] = float(np.mean(values)) if values else None
            entry["sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return spread
