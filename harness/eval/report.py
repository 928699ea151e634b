"""report.html for a run directory: `write_report(run_dir)` builds it from what the directory holds.

What it reads, each part optional (at least one of the first three must be there):
* summary.json of a held-out evaluation (harness.eval.evaluate: "protocols" key): per protocol the
  policies' alignment, simulated vs real conversion per shop (Wilson intervals on both axes),
  type-mix recovery, real and simulated funnels per type side by side, the agent-vs-traces and
  browser checks;
* summary.json of one simulation run (harness.sim.simulate: "per_type" key): conversion per type;
* ab_summary.json of an A/B run (harness.sim.ab), in the directory itself or in `ab/`: the arms,
  the per-type effects and a forest plot of ΔCR with its intervals;
* the codebook of the run (`codebook/` or `<protocol>/codebook/`): its type table (types.json) and
  its summary figures (metrics.json).

On top, the verdicts (harness.eval.verdicts): one plain sentence per thing the figures do or do
not show, such as an A/B in which nobody converted.

The PNGs are written next to report.html (plots/), and report.html refers to them by relative
path, so the directory is self-contained: copy it anywhere and open the file. Plots are drawn at
100 dpi at the size they are shown, so their text reads like the page's.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from harness.eval import verdicts
from harness.sim.paired import wilson_interval

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
DPI = 100
POLICY_COLOURS = {"persona": "#1f77b4", "neutral": "#ff7f0e", "no_persona": "#2ca02c", "mismatched": "#d62728",
                  "type_profile": "#9467bd", "global_rate": "#7f7f7f", "type_oracle": "#8c564b"}
POLICY_MARKERS = {"persona": "o", "neutral": "^", "no_persona": "v", "mismatched": "P", "type_profile": "s",
                  "global_rate": "D", "type_oracle": "X"}
MAX_TYPE_ROWS = 32  # per-type behaviour rows shown (folds: each fold's types)
MANY_SHOPS = 12  # above this, the conversion plot draws small points and faint bars, the shop table folds
REAL_COLOUR, SIMULATED_COLOUR = "#9e9e9e", POLICY_COLOURS["persona"]
FUNNEL_STAGES = (("viewed_rate", "viewed a product"), ("cart_rate", "carted"), ("conversion_rate", "purchased"))


class ReportError(ValueError):
    """A run directory with nothing to report."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 10})
    return plt


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------
# Plots


def plot_conversion(rows: list[dict], path: Path, title: str) -> None:
    """Simulated vs real conversion per shop, one colour per policy, Wilson intervals on both axes.

    The horizontal bar is the real rate's interval (the shop's real buyers), the vertical one the
    simulated rate's (the synthetic buyers); rows that need no simulation (global_rate,
    type_oracle) have no vertical bar."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.2))
    many = len({r["shop"] for r in rows}) > MANY_SHOPS
    style = dict(markersize=4, capsize=0, elinewidth=0.5, alpha=0.6) if many else dict(markersize=7, capsize=3, alpha=0.85)
    top = 0.0
    for policy in dict.fromkeys(r["policy"] for r in rows):
        for index, row in enumerate(r for r in rows if r["policy"] == policy):
            x, y = row["cr_real"], row["cr_sim"]
            xerr = _error_bar(x, row.get("cr_real_ci"))
            yerr = _error_bar(y, row.get("cr_sim_ci"))
            axis.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=POLICY_MARKERS.get(policy, "o"), color=POLICY_COLOURS.get(policy),
                          label=policy if index == 0 else None, **style)
            top = max(top, x, y, *(row.get("cr_real_ci") or []), *(row.get("cr_sim_ci") or []))
    top = min(1.0, top * 1.08) or 1.0
    axis.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--", label="y = x")
    # A little room below 0: a policy that converts nobody sits on the axis and must stay visible.
    axis.set_xlim(-0.02 * top, top), axis.set_ylim(-0.02 * top, top)
    axis.set_xlabel("real conversion rate (held-out shop)")
    axis.set_ylabel("simulated conversion rate (store-counted)")
    axis.set_title(title)
    axis.legend(loc="upper left")
    _save(plt, figure, path)


def _error_bar(value: float, interval) -> list[list[float]] | None:
    """matplotlib's [[below], [above]] from an interval (None: no bar)."""
    if not interval:
        return None
    return [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]


def plot_type_mix(shops: dict, path: Path, title: str) -> None:
    """Sampled vs real share of every code in every held-out shop (points on y = x: recovered)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 5.2))
    real, sampled = [], []
    for entry in shops.values():
        real_mix = {str(k): v for k, v in entry["real"].items()}
        sampled_mix = {str(k): v for k, v in entry["sampled"].items()}
        for code in real_mix.keys() | sampled_mix.keys():
            real.append(real_mix.get(code, 0.0)), sampled.append(sampled_mix.get(code, 0.0))
    axis.scatter(real, sampled, s=30, alpha=0.6)
    top = max([*real, *sampled, 0.01]) * 1.05
    axis.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--")
    axis.set_xlim(0, top), axis.set_ylim(0, top)
    axis.set_xlabel("real share of the type in the shop")
    axis.set_ylabel("share among the sampled synthetic buyers")
    axis.set_title(title)
    _save(plt, figure, path)


def plot_funnels(real: dict, simulated: dict, path: Path, title: str) -> None:
    """One panel per funnel stage; in each, per type, the real buyers' share (grey) next to the
    simulated buyers' share (blue)."""
    import numpy as np

    plt = _pyplot()
    codes = sorted(real.keys() | simulated.keys(), key=int)
    x = np.arange(len(codes))
    figure, axes = plt.subplots(len(FUNNEL_STAGES), 1, figsize=(10.4, 7.6), sharex=True)
    for axis, (key, label) in zip(axes, FUNNEL_STAGES):
        for offset, source, colour, name in ((-0.2, real, REAL_COLOUR, "real buyers"),
                                             (0.2, simulated, SIMULATED_COLOUR, "persona agent")):
            heights = [(source.get(code) or {}).get(key) or 0.0 for code in codes]
            axis.bar(x + offset, heights, 0.4, color=colour, label=name)
        axis.set_ylim(0, 1.05)
        axis.set_ylabel(f"share that\n{label}")
        axis.grid(axis="y", alpha=0.3)
    # Title on the left and legend on the right, both above the bars they would otherwise hide.
    axes[0].set_title(title, loc="left")
    axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    axes[-1].set_xticks(x, codes)
    axes[-1].set_xlabel("buyer type (code)")
    _save(plt, figure, path)


def plot_forest(rows: list[dict], path: Path, title: str) -> None:
    """ΔCR (B − A) with its interval, overall on top, then one row per type."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.8, 1.4 + 0.34 * len(rows)))
    y = list(range(len(rows)))[::-1]
    for row, position in zip(rows, y):
        low, high = row["ci"]
        colour = "black" if row["label"].startswith("all") else SIMULATED_COLOUR
        axis.errorbar(row["delta"], position, xerr=[[row["delta"] - low], [high - row["delta"]]], fmt="o",
                      color=colour, capsize=4, markersize=6)
    axis.axvline(0, color="grey", linestyle="--", linewidth=1)
    axis.set_yticks(y, [row["label"] for row in rows])
    axis.set_xlabel("ΔCR = CR(B) − CR(A), with its paired bootstrap interval")
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    _save(plt, figure, path)


def plot_type_rates(per_type: dict, path: Path, title: str) -> None:
    """A single simulation: simulated vs real conversion per type."""
    import numpy as np

    plt = _pyplot()
    codes = sorted(per_type, key=int)
    x = np.arange(len(codes))
    figure, axis = plt.subplots(figsize=(max(5.6, 0.45 * len(codes) + 2.5), 4.2))
    axis.bar(x - 0.2, [per_type[c].get("real_conversion_rate") or 0.0 for c in codes], 0.4, color=REAL_COLOUR,
             label="real (type's rate)")
    axis.bar(x + 0.2, [per_type[c]["conversion_rate"] for c in codes], 0.4, color=SIMULATED_COLOUR, label="simulated")
    axis.set_xticks(x, codes)
    axis.set_ylim(0, 1.05)
    axis.set_xlabel("buyer type (code)")
    axis.set_ylabel("conversion rate")
    axis.set_title(title)
    axis.legend()
    _save(plt, figure, path)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[tuple[str, str]], left: tuple[str, ...] = ()) -> str:
    """An HTML table: columns are (key, heading); numbers align right, the `left` columns (text) left."""
    head = "".join(f"<th{' class=text' if key in left else ''}>{html.escape(heading)}</th>" for key, heading in columns)
    body = "".join("<tr>" + "".join(f"<td{' class=text' if key in left else ''}>{_cell(row.get(key))}</td>"
                                    for key, _ in columns) + "</tr>" for row in rows)
    # In a scrolling box: a table wider than the page (the per-fold one) scrolls instead of spilling over.
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def rate_with_interval(rate: float | None, interval=None) -> str:
    """'28.4 % [22.1, 35.2]' (percent); a plain string so that table() shows it as it is."""
    if rate is None:
        return "—"
    text = f"{100 * rate:.1f} %"
    if interval:
        text += f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"
    return text


def image(relative: str, caption: str, wide: bool = False) -> str:
    kind = "wide" if wide else "half"
    return (f'<figure class="{kind}"><img src="{html.escape(relative)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def verdict_box(lines: list[str]) -> str:
    if not lines:
        return ""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<section class='verdicts'><h2>Verdicts</h2><ul>{items}</ul></section>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1080px; padding: 0 1em; color: #222;
       font-size: 16px; line-height: 1.45; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.95em; }
.scroll { overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
td.text, th.text { text-align: left; }
figure { display: inline-block; margin: 0.5em 0.8em 1.2em 0; vertical-align: top; }
figure.half { width: 520px; } figure.wide { display: block; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }  /* at the size drawn: no shrinking */
figcaption { font-size: 0.92em; color: #444; margin-top: 0.3em; }
.note { color: #444; }
.verdicts { background: #fff8e1; border: 1px solid #f0c36d; padding: 0.2em 1.2em 0.6em; }
.verdicts h2 { border: none; margin-top: 0.6em; } .verdicts li { margin: 0.3em 0; }
p.verdict { background: #fff8e1; border-left: 4px solid #f0c36d; padding: 0.3em 0.8em; }
"""


# ---------------------------------------------------------------------------------------------
# Held-out evaluation


def evaluation_section(summary: dict, plots: Path) -> str:
    parts = ["<h2>Held-out evaluation</h2>",
             f"<p class='note'>Held-out shops: {len(summary['split']['held_out'])} "
             f"(of {summary['split']['eligible']} eligible); training shops: {summary['split']['training']}. "
             "Alignment = mean over shops of 1 − min(1, |CR<sub>sim</sub> − CR<sub>real</sub>| / CR<sub>real</sub>); "
             "simulated conversions are counted from the store's order log.</p>"]
    for protocol, result in summary["protocols"].items():
        parts.append(f"<h3>Protocol: {html.escape(protocol)}</h3>")
        parts.append(policies_table(result))
        parts.append(reading_note(result))
        parts.append(seeds_part((summary.get("seeds") or {}).get(protocol), plots.parent))
        parts.append(folds_part(result.get("folds")))
        parts.append(conversion_figures(protocol, result, plots))
        parts.append(strata_part(result))
        parts.append(behaviour_part(result))
        parts.append(per_shop_part(result["shops"]))
        parts.append(funnel_part(protocol, result, plots))
        parts.append(agent_check_part(result.get("agent_check")))
        parts.append(browser_check_part(result.get("browser_check")))
        parts += [transfer_part(store, transfer) for store, transfer in (result.get("transfer") or {}).items()]
        parts.append(phases_part(result.get("phases")))
    return "\n".join(parts)


def per_shop_part(rows: list[dict]) -> str:
    """The per-shop table; folded behind a summary line when there are many shops."""
    shops = len({row["shop"] for row in rows})
    if shops <= MANY_SHOPS:
        return "<h4>Per shop</h4>" + shops_table(rows)
    return (f"<h4>Per shop</h4><details><summary>{shops} shops × {len(rows) // shops} rows "
            "(click to open)</summary>" + shops_table(rows) + "</details>")


def policies_table(result: dict) -> str:
    policies = [{"policy": name, **figures} for name, figures in result["policies"].items()]
    return table(policies, [("policy", "policy"), ("shops", "shops"), ("alignment", "alignment"),
                            ("alignment_ci", "95 % bootstrap over shops"), ("pearson", "Pearson r"), ("spearman", "Spearman ρ"),
                            ("mean_abs_error", "mean |CR sim − real|"), ("mean_cr_sim", "mean CR sim"),
                            ("mean_cr_real", "mean CR real")])


def reading_note(result: dict) -> str:
    """How to read the headline: its sampling ceiling, the oracle ratio, who the held-out buyers are."""
    notes = []
    if result.get("temperature") is not None:
        guidance = result.get("guidance") or 1.0
        bar = (result.get("calibration") or {}).get("chosen_plausibility") or 0.0
        notes.append(f"The persona agent samples at T = {result['temperature']:g}" + (
            f" under persona guidance {guidance:g}: each step's log-probabilities are the neutral token's plus "
            f"{guidance:g} × (persona − neutral)" if guidance != 1.0 else "") + (
            f", on the tokens with at least {bar:g} of the persona's top token's probability (the rest keep the "
            "persona's own)" if guidance != 1.0 and bar else "") + ".")
    if result.get("sampling_ceiling") is not None:
        notes.append(f"Sampling ceiling {result['sampling_ceiling']:.3f}: the alignment expected when every synthetic "
                     "buyer buys with the shop's real probability, with this many buyers per shop. Quota sampling "
                     "of types takes the type mix out of that noise, so a row can score above it.")
    if result.get("persona_vs_oracle") is not None:
        notes.append(f"Persona / type oracle = {result['persona_vs_oracle']:.3f}: the share of what the types "
                     "themselves allow that the agent reaches.")
    if result.get("people_overlap") is not None:
        notes.append(f"Held-out shops are not held-out people: {100 * result['people_overlap']:.0f} % of their buyers "
                     "also shop in training shops.")
    return f"<p class='note'>{' '.join(html.escape(n) for n in notes)}</p>" if notes else ""


def seeds_part(seeds: dict | None, run_dir: Path) -> str:
    if not seeds:
        return ""
    names = sorted({seed for entry in seeds.values() for seed in entry["per_seed"]}, key=int)
    rows = [seed_row(policy, entry, names) for policy, entry in seeds.items()]
    reports = [f"<a href='seed{n}/{REPORT_FILE}'>seed {n}</a>" for n in names if (run_dir / f"seed{n}" / REPORT_FILE).is_file()]
    return (f"<h4>Over seeds</h4><p class='note'>Each seed's alignment with its 95 % bootstrap interval over shops; "
            f"mean and sd over the seeds. The other tables of this report are seed {names[0]}'s"
            + (f"; each seed's own report: {', '.join(reports)}" if reports else "") + ".</p>"
            + table(rows, [("policy", "policy"), ("mean", "mean alignment"), ("sd", "sd"),
                           *((f"s{n}", f"seed {n}") for n in names)]))


def seed_row(policy: str, entry: dict, names: list[str]) -> dict:
    intervals = entry.get("per_seed_ci") or {}  # none in a summary written before they were kept
    return {"policy": policy, "mean": figure_with_interval(entry["mean"]), "sd": figure_with_interval(entry["sd"]),
            **{f"s{n}": figure_with_interval(entry["per_seed"].get(n), intervals.get(n)) for n in names}}


def figure_with_interval(value: float | None, interval=None) -> str:
    """'0.918 [0.903, 0.932]': three decimals, and the interval when there is one; a plain string so
    that table() shows it as it is."""
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def folds_part(folds: list[dict] | None) -> str:
    if not folds:
        return ""
    return ("<h4>Per fold</h4><p class='note'>Each fold learned its codebook, traces and agent from the other shops, "
            "its temperature is the one calibration chose on its own training shops (its agent's default when calibration is off): "
            "the one under which the agent's conversion per type is closest to its traces' (type gap: buyer-weighted "
            "|agent − traces| beyond sampling noise; worst type: how far one type's traces' conversion lies outside the Wilson "
            "interval of the agent's; conversion gap: the same per-type differences weighed by conversions, Σ buyers·|agent "
            "− traces| beyond sampling / Σ buyers·traces, the share of the traces' conversions the agent loses or moves "
            "to other types). An agent over any of their limits (the conversion gap's under the paper protocol only) was "
            "trained to twice the SFT steps (rejected agents: their type gap / worst type / conversion gap). Under persona "
            "guidance the calibration also tries each temperature with a plausibility bar (only the tokens with at least "
            "that share of the persona's top token's probability are pushed) and weighs, beside the type gap, how far the "
            "share of buyers who view a product lies from the real buyers'. Held-out buyers against their type (when "
            "every type converts at 0 % or 100 %): buyers of buying types who bought nothing, and buyers of types that "
            "never buy who bought; the type profile buys for exactly the buyers of buying types, so these buyers are "
            "what keeps the agent behind it.</p>"
            + table([{**fold, "against_type": verdicts.against_type_text(fold.get("against_type"))} for fold in folds],
                    [("fold", "fold"), ("held_out", "held-out shops"), ("temperature", "temperature"),
                     ("plausibility", "plausibility bar"), ("calibration_viewed", "viewed a product (calibration: agent / real)"),
                     ("calibration_type_gap", "type gap (calibration)"), ("worst_type_gap", "worst type"),
                     ("calibration_conversion_gap", "conversion gap (calibration)"), ("rejected_agents", "rejected agents"),
                     ("persona", "persona alignment"), ("type_oracle", "type oracle"),
                     ("persona_vs_oracle", "persona / oracle"), ("per_type_pearson", "per-type Pearson (agent vs traces)"),
                     ("against_type", "held-out buyers against their type"),
                     ("people_overlap", "buyers also in training shops")], left=("against_type",)))


def phases_part(phases: dict | None) -> str:
    """Where the evaluation's time went (all folds added up), and buyers per minute of each simulation."""
    if not phases or not phases.get("seconds"):
        return ""
    rows = [{"step": name, "minutes": seconds / 60, "buyers": phases["buyers"].get(name),
             "per_minute": phases["buyers_per_minute"].get(name)} for name, seconds in phases["seconds"].items()]
    return (f"<h4>Time per step</h4><p class='note'>{phases['total_seconds'] / 60:.1f} min in all "
            "(steps skipped on a resume count as first measured).</p>"
            + table(rows, [("step", "step"), ("minutes", "minutes"), ("buyers", "buyers"), ("per_minute", "buyers / min")]))


def strata_part(result: dict) -> str:
    """Per policy and funnel stratum: alignment of the share of buyers who reached it."""
    strata = result.get("strata") or {}
    if not strata:
        return ""
    rows = []
    for policy, by_stratum in strata.items():
        row = {"policy": policy}
        for name, entry in by_stratum.items():
            row[name] = (f"{entry['alignment']:.3f} ({100 * entry['mean_sim']:.1f} % vs {100 * entry['mean_real']:.1f} %)"
                         if entry else "not in the log")
        rows.append(row)
    names = list(next(iter(strata.values())))
    return ("<h4>Funnel strata</h4><p class='note'>Per stratum, the alignment of the share of buyers who reached it "
            "(simulated vs real mean share); a stratum the real log never records is not scored.</p>"
            + table(rows, [("policy", "policy"), *((name, name) for name in names)]))


BEHAVIOUR_NOTE = (
    "Distance of the simulated buyers to the real ones beside its noise floor (as many buyers drawn from the real "
    "buyers themselves), mean over {over}; ratio 1 = as close as sampling noise allows. Product views, cart adds and "
    "events per buyer: Wasserstein-1 (events: the event types both the log and the store record); outcome: JS "
    "divergence in bits between the shares of visits that ended at each stage.")


def behaviour_cells(figures: dict | None) -> dict:
    """One cell per measure: distance (floor, ratio)."""
    cells = {}
    for measure, entry in (figures or {}).items():
        if isinstance(entry, dict) and entry.get("distance") is not None:
            ratio = f", ×{entry['ratio_to_floor']:.1f}" if entry.get("ratio_to_floor") is not None else ""
            cells[measure] = f"{entry['distance']:.3f} (floor {entry['floor']:.3f}{ratio})"
    return cells


def behaviour_part(result: dict) -> str:
    """Behaviour beyond conversion: per policy over shops, and per type for the persona agent."""
    from harness.eval.metrics import BEHAVIOUR_MEASURES

    distances = {policy: d for policy, d in (result.get("distances") or {}).items() if d and "product_views" in d}
    if not distances:
        return ""
    columns = [("policy", "policy"), *((m, m.replace("_", " ")) for m in BEHAVIOUR_MEASURES)]
    parts = ["<h4>Behaviour per shop</h4>", f"<p class='note'>{BEHAVIOUR_NOTE.format(over='shops')}</p>",
             table([{"policy": policy, **behaviour_cells(d)} for policy, d in distances.items()], columns)]
    per_type = result.get("type_distances") or {}
    if per_type.get("codes"):
        rows = [{"policy": f"persona, {len(per_type['codes'])} types", **behaviour_cells(per_type["summary"])}]
        rows += [{"policy": f"type {code} ({entry['sim_buyers']} sim / {entry['real_buyers']} real)", **behaviour_cells(entry)}
                 for code, entry in list(per_type["codes"].items())[:MAX_TYPE_ROWS]]
        parts += ["<h4>Behaviour per type</h4>",
                  f"<p class='note'>{BEHAVIOUR_NOTE.format(over='types')} Per type: the held-out shops' simulated "
                  "buyers of that type against the real buyers the codebook assigned to it (types with at least 10 "
                  "of each).</p>", table(rows, columns)]
    return "".join(parts)


def conversion_figures(protocol: str, result: dict, plots: Path) -> str:
    png = plots / f"conversion_{protocol}.png"
    plot_conversion(result["shops"], png, f"{protocol}: simulated vs real conversion")
    figures = [image(f"{PLOTS_DIR}/{png.name}",
                     "Each point is one held-out shop under one policy: real conversion (x) against simulated "
                     "conversion (y), with 95 % Wilson intervals on both axes. Points on the dashed y = x line "
                     "convert like the shop's real buyers.")]
    mix = result.get("type_mix") or {}
    if mix.get("shops"):
        png = plots / f"type_mix_{protocol}.png"
        plot_type_mix(mix["shops"], png, f"{protocol}: type-mix recovery")
        figures.append(image(f"{PLOTS_DIR}/{png.name}",
                             "Each point is one buyer type in one held-out shop: its share among the shop's real "
                             "buyers (x) and among the sampled synthetic buyers (y). "
                             f"Mean Jensen–Shannon divergence {mix['mean_jsd']:.4f} bits."))
    return "".join(figures)


def shops_table(rows: list[dict]) -> str:
    shaped = [{"policy": r["policy"], "shop": r["shop"], "sim_buyers": r.get("sim_buyers"),
               "cr_sim": rate_with_interval(r["cr_sim"], r.get("cr_sim_ci")), "real_buyers": r.get("real_buyers"),
               "cr_real": rate_with_interval(r["cr_real"], r.get("cr_real_ci")), "alignment": r.get("alignment"),
               "max_steps": (r.get("outcomes") or {}).get("max_steps"), "store_agreement": r.get("store_agreement")}
              for r in rows]
    return table(shaped, [("policy", "policy"), ("shop", "shop"), ("sim_buyers", "sim buyers"),
                          ("cr_sim", "CR sim [95 % Wilson]"), ("real_buyers", "real buyers"),
                          ("cr_real", "CR real [95 % Wilson]"), ("alignment", "alignment"),
                          ("max_steps", "ended at max-steps"), ("store_agreement", "store = agent")], left=("shop",))


def funnel_part(protocol: str, result: dict, plots: Path) -> str:
    """Real and simulated funnels per type: the plot, the table, the Kruskal–Wallis tests."""
    behaviour = result.get("per_type") or {}
    simulated = behaviour.get("types") or {}
    real = result.get("real_per_type") or {}
    if not simulated and not real:
        return ""
    png = plots / f"funnels_{protocol}.png"
    plot_funnels(real, simulated, png, f"{protocol}: funnel per type, real buyers vs persona agent")
    caption = ("Per buyer type, pooled over the held-out shops: the share of buyers who viewed a product, put "
               "something in the cart and purchased — real buyers (grey) next to the persona agent's synthetic "
               "buyers (blue, from the store's event log). A type the agent plays well has equal bars.")
    if not real:
        caption += " This run's summary has no real funnel (evaluated before it was recorded): grey bars are absent."
    parts = ["<h4>Funnels per type</h4>", image(f"{PLOTS_DIR}/{png.name}", caption, wide=True),
             funnel_table(real, simulated)]
    kruskal = behaviour.get("kruskal") or {}
    if kruskal:
        parts.append(table([{"variable": k, **v} for k, v in kruskal.items()],
                           [("variable", "Kruskal–Wallis across types (agent)"), ("H", "H"), ("p", "p")]))
    return "\n".join(parts)


def funnel_table(real: dict, simulated: dict) -> str:
    rows = []
    for code in sorted(real.keys() | simulated.keys(), key=int):
        mine, theirs = simulated.get(code) or {}, real.get(code) or {}
        row = {"code": code, "real_buyers": theirs.get("buyers"), "sim_buyers": mine.get("buyers"),
               "mean_steps": mine.get("mean_steps")}
        for key, _ in FUNNEL_STAGES:
            row[f"real_{key}"] = rate_with_interval(theirs.get(key))
            row[f"sim_{key}"] = rate_with_interval(mine.get(key))
        rows.append(row)
    return table(rows, [("code", "type"), ("real_buyers", "real buyers"), ("real_viewed_rate", "real viewed"),
                        ("real_cart_rate", "real carted"), ("real_conversion_rate", "real purchased"),
                        ("sim_buyers", "agent buyers"), ("sim_viewed_rate", "agent viewed"),
                        ("sim_cart_rate", "agent carted"), ("sim_conversion_rate", "agent purchased"),
                        ("mean_steps", "agent mean steps")])


def agent_check_part(check: dict | None) -> str:
    if not check:
        return ""
    from harness.eval.metrics import conversion_gap

    rows = [{"code": c, **v} for c, v in sorted(check["per_code"].items(), key=lambda kv: int(kv[0]))]
    return ("<h4>Agent vs traces: conversion per code</h4>"
            f"<p class='note'>Weighted mean |agent − traces| = {_cell(check.get('weighted_mean_abs_gap'))}; "
            f"conversion gap (Σ buyers·|agent − traces| beyond sampling / Σ buyers·traces) = {_cell(conversion_gap(check))}; "
            f"Pearson r = {_cell(check.get('pearson'))}.</p>"
            + table(rows, [("code", "code"), ("agent_buyers", "agent buyers"), ("agent_conversion", "agent conversion"),
                           ("trace_count", "traces"), ("trace_conversion", "trace conversion")]))


def browser_check_part(browser: dict | None) -> str:
    if not browser:
        return ""
    rows = [{"driver": driver, **browser[driver]} for driver in ("browser", "http")]
    return (f"<h4>Driver check on shop {html.escape(str(browser['shop']))} "
            f"({'agree' if browser['agree'] else 'DISAGREE'} within Wilson intervals)</h4>"
            + table(rows, [("driver", "driver"), ("sim_buyers", "buyers"), ("sim_converted", "converted"),
                           ("cr_sim", "CR"), ("cr_sim_ci", "95% CI (Wilson)")]))


def transfer_part(store: str, transfer: dict) -> str:
    """The same synthetic buyers on our mock store and on another store (Oscar, a held-out theme)."""
    engine = html.escape(store)
    shops = [{"shop": row["shop"], "buyers": row["buyers"], "real": rate_with_interval(row["cr_real"], row["cr_real_ci"]),
              "mock": rate_with_interval(row["cr_mock"], row["cr_mock_ci"]),
              "other": rate_with_interval(row["cr_transfer"], row["cr_transfer_ci"]),
              "agreement": row["store_agreement"]} for row in transfer["shops"]]
    per_type = [{"code": code, "buyers": entry["buyers"],
                 "mock": rate_with_interval(entry["mock_converted"] / entry["buyers"]) if entry["buyers"] else "—",
                 "other": rate_with_interval(entry["transfer_converted"] / entry["buyers"]) if entry["buyers"] else "—"}
                for code, entry in sorted(transfer["per_type"].items(), key=lambda kv: int(kv[0]))]
    return (f"<h4>Transfer: the persona agent's buyers on the mock store and on {engine}</h4>"
            "<p class='note'>The same synthetic buyers (codes and seeds) of each shop; conversions counted from "
            "each store's own orders (agreement: the share of buyers whose claim the store's count confirms); "
            "95 % Wilson intervals.</p>"
            + table(shops, [("shop", "shop"), ("buyers", "buyers"), ("real", "real CR"), ("mock", "mock store CR"),
                            ("other", f"{engine} CR"), ("agreement", "store agreement")], left=("shop",))
            + "<h5>Per type, pooled over those shops</h5>"
            + table(per_type, [("code", "code"), ("buyers", "buyers"), ("mock", "mock store CR"),
                               ("other", f"{engine} CR")]))


# ---------------------------------------------------------------------------------------------
# One simulation


def simulation_section(summary: dict, plots: Path) -> str:
    png = plots / "per_type_conversion.png"
    plot_type_rates(summary["per_type"], png, f"shop {summary.get('shop')}: conversion per type")
    rows = [{"code": c, **v} for c, v in sorted(summary["per_type"].items(), key=lambda kv: int(kv[0]))]
    overview = [{"figure": k, "value": summary.get(k)} for k in ("shop", "policy", "driver", "buyers", "completed",
                                                                  "converted", "conversion_rate", "real_conversion_rate",
                                                                  "conversion_gap")]
    caption = ("Per buyer type: the type's real conversion rate (grey, from the codebook) next to the rate of its "
               "synthetic buyers in this run (blue).")
    return "\n".join(["<h2>Simulation</h2>", table(overview, [("figure", "figure"), ("value", "value")]),
                      image(f"{PLOTS_DIR}/{png.name}", caption, wide=len(rows) > 10),
                      table(rows, [("code", "code"), ("buyers", "buyers"), ("converted", "converted"),
                                   ("conversion_rate", "CR sim"), ("real_conversion_rate", "CR real")])])


# ---------------------------------------------------------------------------------------------
# A/B


def find_ab(run_dir: Path) -> Path | None:
    """The folder of an A/B run: the run dir itself or its ab/ sub-folder."""
    for folder in (run_dir, run_dir / "ab"):
        if (folder / "ab_summary.json").is_file() or (folder / "ab_effects.png").is_file():
            return folder
    return None


def ab_section(folder: Path, plots: Path) -> str:
    """The arms, the forest plot and the per-type effects, under the A/B's own verdict: a forest of
    zero-width intervals (nobody converted) must not be read without it."""
    summary = _read_json(folder / "ab_summary.json")
    parts = ["<h2>A/B layout effects</h2>"]
    if summary is None:  # only the A/B helper's own plot is there
        target = plots / "ab_effects.png"
        shutil.copyfile(folder / "ab_effects.png", target)
        return "\n".join(parts + [image(f"{PLOTS_DIR}/{target.name}", "ΔCR overall and per type with intervals")])
    parts.append(f"<p class='note'>{html.escape(summary.get('kind', 'A/B'))} on shop {html.escape(str(summary['shop']))}, "
                 f"policy {html.escape(str(summary.get('policy')))}, {summary['n']} paired buyers (the same buyers in "
                 f"both arms); conversions from the {html.escape(str(summary.get('outcome_source', 'store order log')))}. "
                 f"McNemar mid-p = {summary['p_value']:.3g}.</p>")
    parts += [f"<p class='verdict'>{html.escape(line)}</p>" for line in verdicts.ab_verdicts(summary)]
    parts.append(arms_table(summary))
    rows = effect_rows(summary)
    png = plots / "ab_forest.png"
    plot_forest(rows, png, f"B = {summary['variants']['B']} vs A = {summary['variants']['A']}")
    parts.append(image(f"{PLOTS_DIR}/{png.name}",
                       "Forest plot: the change in conversion rate from layout A to layout B, for all buyers (black) "
                       f"and per buyer type (blue), with {summary.get('confidence', 0.95):.0%} paired bootstrap intervals. "
                       "An interval that crosses the dashed zero line is no evidence of a difference.", wide=True))
    parts.append(table(rows, [("label", "buyers"), ("cr_a", "CR A"), ("cr_b", "CR B"), ("delta_text", "ΔCR [interval]"),
                              ("only_a", "converted in A only"), ("only_b", "converted in B only"), ("p_mid", "McNemar mid-p")]))
    return "\n".join(parts)


def arms_table(summary: dict) -> str:
    rows = []
    n = summary["n"]
    for arm in ("A", "B"):
        figures = (summary.get("arms") or {}).get(arm) or {}
        converted = round(summary[f"conversion_{arm.lower()}"] * n)
        outcomes = figures.get("outcomes") or {}
        rows.append({"arm": arm, "variant": summary["variants"][arm], "buyers": n, "converted": converted,
                     "cr": rate_with_interval(converted / n, wilson_interval(converted, n)),
                     "max_steps": outcomes.get("max_steps"), "errors": outcomes.get("error")})
    return table(rows, [("arm", "arm"), ("variant", "layout"), ("buyers", "buyers"), ("converted", "converted"),
                        ("cr", "CR [95 % Wilson]"), ("max_steps", "ended at max-steps"), ("errors", "errors")],
                 left=("variant",))


def effect_rows(summary: dict) -> list[dict]:
    """Overall, then one row per type (by code): rates, ΔCR with its interval, discordant pairs."""
    overall = {"n": summary["n"], "conversion_a": summary["conversion_a"], "conversion_b": summary["conversion_b"],
               "delta": summary["delta"], "ci": summary["ci"], "p_mid": summary["p_value"],
               "b_only_a_converted": summary["mcnemar"]["b_only_a_converted"],
               "c_only_b_converted": summary["mcnemar"]["c_only_b_converted"]}
    entries = [(f"all buyers (n={summary['n']})", overall)]
    for code, effect in sorted((summary.get("per_type") or {}).items(), key=lambda kv: int(kv[0])):
        entries.append((f"type {code} (n={effect['n']})", effect))
    return [{"label": label, "delta": e["delta"], "ci": e["ci"], "cr_a": rate_with_interval(e["conversion_a"]),
             "cr_b": rate_with_interval(e["conversion_b"]),
             "delta_text": f"{e['delta']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]",
             "only_a": e["b_only_a_converted"], "only_b": e["c_only_b_converted"], "p_mid": e["p_mid"]}
            for label, e in entries]


# ---------------------------------------------------------------------------------------------
# Codebook


def codebook_dirs(run_dir: Path, summary: dict | None) -> list[tuple[str, Path]]:
    """(name, dir) of every codebook under the run: codebook/ and <protocol>/codebook/."""
    names = ["."] + list((summary or {}).get("protocols") or {})
    found = [(name, run_dir / name / "codebook") for name in names]
    return [(("codebook" if name == "." else f"{name}/codebook"), path) for name, path in found
            if (path / "types.json").is_file()]


def codebook_section(name: str, directory: Path) -> str:
    types = (_read_json(directory / "types.json") or {}).get("types") or []
    metrics = _read_json(directory / "metrics.json") or {}
    parts = [f"<h2>Codebook ({html.escape(name)})</h2>"]
    if metrics:
        parts.append(metrics_table(metrics))
    rows = [{"code": t.get("code"), "buyers": t.get("n_buyers"), "share": rate_with_interval(t.get("share")),
             "conversion": rate_with_interval(t.get("conversion_rate")), "median_events": t.get("median_events"),
             "summary": t.get("summary")} for t in sorted(types, key=lambda t: t.get("code", 0))]
    parts.append(table(rows, [("code", "type"), ("buyers", "buyers"), ("share", "share"), ("conversion", "conversion"),
                              ("median_events", "median events"), ("summary", "summary")], left=("summary",)))
    return "\n".join(parts)


def metrics_table(metrics: dict) -> str:
    conversion, shops = metrics.get("conversion") or {}, metrics.get("shops") or {}
    active = metrics.get("active_codes") or {}
    rows = [
        ("buyers it learned from", metrics.get("n_buyers")),
        ("types (K)", metrics.get("codebook_size")),
        ("active types", active.get("count")),
        ("perplexity (effective number of types)", metrics.get("perplexity")),
        ("reconstruction MSE (standardised features)", metrics.get("reconstruction_mse")),
        ("Calinski–Harabasz", metrics.get("calinski_harabasz")),
        ("conversion AUC from the type's rate", conversion.get("auc_from_type_rate")),
        ("std of conversion between types", conversion.get("rate_std_between_types")),
        ("JSD between shops' type mixes (bits)", shops.get("between_shops_jsd_bits")),
        ("JSD split-half noise floor (bits)", shops.get("split_half_jsd_bits")),
    ]
    return table([{"figure": k, "value": v} for k, v in rows if v is not None], [("figure", "figure"), ("value", "value")])


# ---------------------------------------------------------------------------------------------
# The report


def write_report(run_dir: str | Path) -> Path:
    """Build run_dir/report.html (and run_dir/plots/*.png) from what run_dir holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    summary = _read_json(run_dir / "summary.json")
    ab_folder = find_ab(run_dir)
    evaluation = summary if summary and "protocols" in summary else None
    simulation = summary if summary and "per_type" in summary and not evaluation else None
    if not (evaluation or simulation or ab_folder):
        raise ReportError(f"{run_dir}: nothing to report (expected summary.json of an evaluation or a simulation, "
                          "or ab_summary.json / ab_effects.png here or in ab/)")
    plots = run_dir / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    ab_summary = _read_json(ab_folder / "ab_summary.json") if ab_folder else None
    lines = run_verdicts(evaluation, simulation, ab_summary)
    sections = [verdict_box(lines)]
    if evaluation:
        sections.append(evaluation_section(evaluation, plots))
    if simulation:
        sections.append(simulation_section(simulation, plots))
    if ab_folder:
        sections.append(ab_section(ab_folder, plots))
    sections += [codebook_section(name, path) for name, path in codebook_dirs(run_dir, evaluation)]
    title = f"SimPersona report — {run_dir.name}"
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(sections)
                + "\n</body></html>\n")
    path = run_dir / REPORT_FILE
    path.write_text(document, encoding="utf-8")
    return path


def run_verdicts(evaluation: dict | None, simulation: dict | None, ab_summary: dict | None) -> list[str]:
    """Every verdict line of the run, in the order of the report's sections."""
    lines = []
    if evaluation:
        lines += verdicts.evaluation_verdicts(evaluation)
    if simulation:
        lines += verdicts.simulation_verdicts(simulation)
    if ab_summary:
        lines += verdicts.ab_verdicts(ab_summary)
    return lines
