"""report.html for a run directory: `write_report(run_dir)` builds it from what the directory holds.

What it reads, each part optional (at least one must be there):
* summary.json of a held-out evaluation (harness.eval.evaluate: "protocols" key): per protocol a table
  of policies (alignment, Pearson, Spearman), a per-shop table, and PNG plots: simulated vs real
  conversion per shop with the y = x line, type-mix recovery (sampled vs real share of every
  code in every shop), per-type funnels (viewed -> carted -> purchased), the browser check;
* summary.json of one simulation run (harness.sim.simulate: "per_type" key): conversion per type;
* ab_summary.json and ab_effects.png of an A/B run, in the directory itself or in `ab/`.

The PNGs are written next to report.html (plots/), and report.html refers to them by relative
path, so the directory is self-contained: copy it anywhere and open the file.
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
POLICY_COLOURS = {"persona": "#1f77b4", "neutral": "#ff7f0e", "no_persona": "#2ca02c", "type_profile": "#9467bd",
                  "global_rate": "#7f7f7f", "type_oracle": "#8c564b"}


class ReportError(ValueError):
    """A run directory with nothing to report."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None


# ---------------------------------------------------------------------------------------------
# Plots (each returns the PNG's path relative to the run dir)


def plot_conversion(rows: list[dict], path: Path, title: str) -> None:
    """Simulated vs real conversion per shop, one colour per policy, with the y = x line."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5))
    top = 0.0
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        real, simulated = [r["cr_real"] for r in mine], [r["cr_sim"] for r in mine]
        top = max(top, *real, *simulated)
        marker = "_" if policy in ("global_rate", "type_oracle") else "o"
        axis.scatter(real, simulated, label=policy, marker=marker, s=36, alpha=0.8, color=POLICY_COLOURS.get(policy))
    top = top * 1.1 or 1.0
    axis.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--", label="y = x")
    axis.set_xlim(0, top), axis.set_ylim(0, top)
    axis.set_xlabel("real conversion rate (held-out shop)")
    axis.set_ylabel("simulated conversion rate (store-counted)")
    _finish(plt, figure, axis, path, title, legend=True)


def _finish(plt, figure, axis, path: Path, title: str, legend: bool = False) -> None:
    """Title (and legend), tight layout, save as PNG, free the figure."""
    axis.set_title(title)
    if legend:
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_type_mix(shops: dict, path: Path, title: str) -> None:
    """Sampled vs real share of every code in every held-out shop (points on y = x: recovered)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 5))
    real, sampled = [], []
    for entry in shops.values():
        real_mix = {str(k): v for k, v in entry["real"].items()}
        sampled_mix = {str(k): v for k, v in entry["sampled"].items()}
        for code in real_mix.keys() | sampled_mix.keys():
            real.append(real_mix.get(code, 0.0)), sampled.append(sampled_mix.get(code, 0.0))
    axis.scatter(real, sampled, s=18, alpha=0.6)
    top = max([*real, *sampled, 0.01]) * 1.05
    axis.plot([0, top], [0, top], color="black", linewidth=1, linestyle="--")
    axis.set_xlabel("real share of the type in the shop")
    axis.set_ylabel("share among the sampled synthetic buyers")
    _finish(plt, figure, axis, path, title)


def plot_funnels(types: dict, path: Path, title: str, max_types: int = 16) -> None:
    """Per type: share of buyers who viewed a product, put something in the cart, purchased."""
    import numpy as np

    plt = _pyplot()
    chosen = sorted(types.items(), key=lambda item: -item[1]["buyers"])[:max_types]
    chosen.sort(key=lambda item: int(item[0]))
    labels = [code for code, _ in chosen]
    stages = (("viewed_rate", "viewed a product"), ("cart_rate", "carted"), ("conversion_rate", "purchased"))
    figure, axis = plt.subplots(figsize=(max(5.5, 0.6 * len(labels) + 2), 4))
    x = np.arange(len(labels))
    width = 0.8 / len(stages)
    for index, (key, label) in enumerate(stages):
        axis.bar(x + (index - 1) * width, [entry.get(key) or 0.0 for _, entry in chosen], width, label=label)
    axis.set_xticks(x, labels)
    axis.set_xlabel("buyer type (code)")
    axis.set_ylabel("share of the type's synthetic buyers")
    axis.set_ylim(0, 1.05)
    _finish(plt, figure, axis, path, title, legend=True)


def plot_type_rates(per_type: dict, path: Path, title: str) -> None:
    """A single simulation: simulated vs real conversion per type."""
    import numpy as np

    plt = _pyplot()
    codes = sorted(per_type, key=int)
    x = np.arange(len(codes))
    figure, axis = plt.subplots(figsize=(max(5.5, 0.5 * len(codes) + 2), 4))
    axis.bar(x - 0.2, [per_type[c]["conversion_rate"] for c in codes], 0.4, label="simulated")
    axis.bar(x + 0.2, [per_type[c].get("real_conversion_rate") or 0.0 for c in codes], 0.4, label="real")
    axis.set_xticks(x, codes)
    axis.set_xlabel("buyer type (code)")
    axis.set_ylabel("conversion rate")
    _finish(plt, figure, axis, path, title, legend=True)


# ---------------------------------------------------------------------------------------------
# HTML pieces


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"[{value[0]:.3f}, {value[1]:.3f}]"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """An HTML table: columns are (key, heading)."""
    head = "".join(f"<th>{html.escape(heading)}</th>" for _, heading in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(key))}</td>" for key, _ in columns) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(relative: str, caption: str) -> str:
    return f'<figure><img src="{html.escape(relative)}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; }
img { max-width: 520px; border: 1px solid #ddd; } figcaption { font-size: 0.85em; color: #555; }
.note { color: #555; font-size: 0.9em; }
"""


# ---------------------------------------------------------------------------------------------
# Sections


def evaluation_section(summary: dict, run_dir: Path, plots: Path) -> str:
    parts = ["<h2>Held-out evaluation</h2>",
             f"<p class='note'>Held-out shops: {len(summary['split']['held_out'])} "
             f"(of {summary['split']['eligible']} eligible); training shops: {summary['split']['training']}. "
             "Alignment = mean over shops of 1 − min(1, |CR<sub>sim</sub> − CR<sub>real</sub>| / CR<sub>real</sub>); "
             "simulated conversions are counted from the store's order log.</p>"]
    for protocol, result in summary["protocols"].items():
        parts.append(f"<h3>Protocol: {html.escape(protocol)}</h3>")
        policies = [{"policy": name, **figures} for name, figures in result["policies"].items()]
        parts.append(table(policies, [("policy", "policy"), ("shops", "shops"), ("alignment", "alignment"),
                                      ("pearson", "Pearson r"), ("spearman", "Spearman ρ"),
                                      ("mean_abs_error", "mean |CR sim − real|"), ("mean_cr_sim", "mean CR sim"),
                                      ("mean_cr_real", "mean CR real")]))
        conversion_png = plots / f"conversion_{protocol}.png"
        plot_conversion(result["shops"], conversion_png, f"{protocol}: simulated vs real conversion")
        figures = [image(f"{PLOTS_DIR}/{conversion_png.name}", "CR simulated vs real per held-out shop (y = x dashed)")]
        mix = result.get("type_mix") or {}
        if mix.get("shops"):
            mix_png = plots / f"type_mix_{protocol}.png"
            plot_type_mix(mix["shops"], mix_png, f"{protocol}: type-mix recovery (mean JSD {mix['mean_jsd']:.4f} bits)")
            figures.append(image(f"{PLOTS_DIR}/{mix_png.name}", "share of each type: sampled vs real, every shop"))
        behaviour = (result.get("per_type") or {}).get("types") or {}
        if behaviour:
            funnel_png = plots / f"funnels_{protocol}.png"
            plot_funnels(behaviour, funnel_png, f"{protocol}: per-type funnels (persona agent)")
            figures.append(image(f"{PLOTS_DIR}/{funnel_png.name}", "views → cart → purchase per type"))
        parts.append("".join(figures))
        parts.append("<h4>Per shop</h4>")
        parts.append(table(result["shops"], [("policy", "policy"), ("shop", "shop"), ("sim_buyers", "sim buyers"),
                                             ("cr_sim", "CR sim"), ("cr_sim_ci", "95% CI (Wilson)"),
                                             ("real_buyers", "real buyers"), ("cr_real", "CR real"),
                                             ("cr_real_ci", "95% CI (Wilson)"), ("alignment", "alignment"),
                                             ("store_agreement", "store/agent agreement")]))
        if behaviour:
            kruskal = (result.get("per_type") or {}).get("kruskal") or {}
            parts.append("<h4>Per-type behaviour (persona agent, pooled over held-out shops)</h4>")
            parts.append(table([{"code": c, **v} for c, v in sorted(behaviour.items(), key=lambda kv: int(kv[0]))],
                               [("code", "code"), ("buyers", "buyers"), ("mean_steps", "mean steps"),
                                ("mean_product_views", "mean product views"), ("viewed_rate", "viewed"),
                                ("cart_rate", "cart rate"), ("conversion_rate", "conversion")]))
            parts.append(table([{"variable": k, **v} for k, v in kruskal.items()],
                               [("variable", "Kruskal–Wallis across types"), ("H", "H"), ("p", "p")]))
        check = result.get("agent_check")
        if check:
            parts.append("<h4>Agent vs traces: conversion per code</h4>"
                         f"<p class='note'>Weighted mean |agent − traces| = {_cell(check.get('weighted_mean_abs_gap'))}; "
                         f"Pearson r = {_cell(check.get('pearson'))}.</p>")
            parts.append(table([{"code": c, **v} for c, v in sorted(check["per_code"].items(), key=lambda kv: int(kv[0]))],
                               [("code", "code"), ("agent_buyers", "agent buyers"), ("agent_conversion", "agent conversion"),
                                ("trace_count", "traces"), ("trace_conversion", "trace conversion")]))
        browser = result.get("browser_check")
        if browser:
            rows = [{"driver": driver, **browser[driver]} for driver in ("browser", "http")]
            parts.append(f"<h4>Driver check on shop {html.escape(str(browser['shop']))} "
                         f"({'agree' if browser['agree'] else 'DISAGREE'} within Wilson intervals)</h4>")
            parts.append(table(rows, [("driver", "driver"), ("sim_buyers", "buyers"), ("sim_converted", "converted"),
                                      ("cr_sim", "CR"), ("cr_sim_ci", "95% CI (Wilson)")]))
    return "\n".join(parts)


def simulation_section(summary: dict, plots: Path) -> str:
    png = plots / "per_type_conversion.png"
    plot_type_rates(summary["per_type"], png, f"shop {summary.get('shop')}: conversion per type")
    rows = [{"code": c, **v} for c, v in sorted(summary["per_type"].items(), key=lambda kv: int(kv[0]))]
    overview = [{"figure": k, "value": summary.get(k)} for k in ("shop", "policy", "driver", "buyers", "completed",
                                                                  "converted", "conversion_rate", "real_conversion_rate",
                                                                  "conversion_gap")]
    return "\n".join(["<h2>Simulation</h2>", table(overview, [("figure", "figure"), ("value", "value")]),
                      image(f"{PLOTS_DIR}/{png.name}", "simulated vs real conversion per type"),
                      table(rows, [("code", "code"), ("buyers", "buyers"), ("converted", "converted"),
                                   ("conversion_rate", "CR sim"), ("real_conversion_rate", "CR real")])])


def ab_section(run_dir: Path, plots: Path) -> str:
    """The A/B helper's ab_summary.json (scalar figures as a table) and ab_effects.png."""
    for folder in (run_dir, run_dir / "ab"):
        summary = _read_json(folder / "ab_summary.json")
        png = folder / "ab_effects.png"
        if summary is None and not png.is_file():
            continue
        parts = ["<h2>A/B layout effects</h2>"]
        if png.is_file():
            target = plots / "ab_effects.png"
            shutil.copyfile(png, target)
            parts.append(image(f"{PLOTS_DIR}/{target.name}", "A/B effects with confidence intervals"))
        if summary is not None:
            flat = [{"figure": key, "value": value} for key, value in _flatten(summary).items()]
            parts.append(table(flat, [("figure", "figure"), ("value", "value")]))
        return "\n".join(parts)
    return ""


def _flatten(record: dict, prefix: str = "", depth: int = 0) -> dict:
    """Scalar leaves of a nested dict as 'a.b.c' keys (lists of numbers kept as they are)."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and depth < 3:
            flat.update(_flatten(value, name + ".", depth + 1))
        elif not isinstance(value, (dict, list)) or (isinstance(value, list) and len(value) <= 4
                                                     and all(isinstance(v, (int, float)) for v in value)):
            flat[name] = value
    return flat


def write_report(run_dir: str | Path) -> Path:
    """Build run_dir/report.html (and run_dir/plots/*.png) from what run_dir holds."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    plots = run_dir / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    summary = _read_json(run_dir / "summary.json")
    sections = []
    if summary and "protocols" in summary:
        sections.append(evaluation_section(summary, run_dir, plots))
    elif summary and "per_type" in summary:
        sections.append(simulation_section(summary, plots))
    ab = ab_section(run_dir, plots)
    if ab:
        sections.append(ab)
    if not sections:
        raise ReportError(f"{run_dir}: nothing to report (expected summary.json of an evaluation or a simulation, "
                          "or ab_summary.json / ab_effects.png here or in ab/)")
    title = f"SimPersona report — {run_dir.name}"
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(sections)
                + "\n</body></html>\n")
    path = run_dir / REPORT_FILE
    path.write_text(document, encoding="utf-8")
    return path
