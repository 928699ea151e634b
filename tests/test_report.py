"""harness.eval.report: report.html and its PNGs from hand-made run directories."""

import json

import pytest

from harness.eval.report import ReportError, write_report


def evaluation_summary() -> dict:
    shops = []
    for policy, offset in (("persona", 0.01), ("type_profile", -0.02), ("global_rate", 0.0)):
        for shop, real in (("s1", 0.05), ("s2", 0.10), ("s3", 0.20)):
            simulated = 0.08 if policy == "global_rate" else real + offset
            shops.append({"policy": policy, "shop": shop, "cr_sim": simulated, "cr_real": real, "real_buyers": 100,
                          "sim_buyers": 200, "cr_sim_ci": [simulated - 0.03, simulated + 0.03],
                          "cr_real_ci": [real - 0.04, real + 0.05], "alignment": 0.9, "store_agreement": 1.0,
                          "sim_converted": round(simulated * 200), "real_converted": round(real * 100),
                          "outcomes": {"converted": round(simulated * 200), "max_steps": 10}})
            if policy == "global_rate":  # a reference row, as evaluate writes it: no simulation, no interval
                del shops[-1]["cr_sim_ci"]
    return {
        "split": {"training": 40, "held_out": ["s1", "s2", "s3"], "eligible": 12},
        "protocols": {"paper": {
            "policies": {"persona": {"shops": 3, "alignment": 0.91, "pearson": 0.99, "spearman": 1.0},
                         "type_profile": {"shops": 3, "alignment": 0.8, "pearson": 0.97, "spearman": 1.0},
                         "global_rate": {"shops": 3, "alignment": 0.55, "pearson": None, "spearman": None}},
            "shops": shops,
            "type_mix": {"mean_jsd": 0.012, "shops": {
                "s1": {"real": {"0": 0.7, "1": 0.3}, "sampled": {"0": 0.68, "1": 0.32}, "jsd": 0.001},
                "s2": {"real": {"0": 0.4, "2": 0.6}, "sampled": {"0": 0.45, "2": 0.55}, "jsd": 0.004}}},
            "per_type": {"types": {"0": {"buyers": 300, "mean_steps": 3.1, "mean_product_views": 1.0, "viewed_rate": 0.95,
                                         "cart_rate": 0.1, "conversion_rate": 0.05},
                                   "2": {"buyers": 120, "mean_steps": 18.0, "mean_product_views": 1.4, "viewed_rate": 1.0,
                                         "cart_rate": 0.9, "conversion_rate": 0.85}},
                         "kruskal": {"steps": {"H": 120.0, "p": 1e-20}}},
            "real_per_type": {"0": {"buyers": 210, "viewed_rate": 0.9, "cart_rate": 0.2, "conversion_rate": 0.04},
                              "1": {"buyers": 30, "viewed_rate": 1.0, "cart_rate": 0.5, "conversion_rate": 0.3},
                              "2": {"buyers": 60, "viewed_rate": 1.0, "cart_rate": 0.95, "conversion_rate": 0.9}},
            "agent_check": {"per_code": {"0": {"agent_buyers": 300, "agent_conversion": 0.05, "trace_count": 25,
                                               "trace_conversion": 0.0}},
                            "weighted_mean_abs_gap": 0.05, "pearson": None},
            "browser_check": {"shop": "s2", "buyers": 40, "agree": True,
                              "browser": {"cr_sim": 0.1, "cr_sim_ci": [0.04, 0.23], "sim_converted": 4, "sim_buyers": 40},
                              "http": {"cr_sim": 0.125, "cr_sim_ci": [0.05, 0.26], "sim_converted": 5, "sim_buyers": 40}},
        }},
    }


def test_evaluation_report(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(evaluation_summary()))
    path = write_report(tmp_path)
    html = path.read_text()
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["conversion_paper.png", "funnels_paper.png", "type_mix_paper.png"]
    for name in pngs:
        assert f'src="plots/{name}"' in html
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Readable tables with the headline figures.
    assert "<table>" in html and "Spearman" in html and "0.91" in html and "agree within Wilson" in html
    assert "Kruskal" in html
    assert "5.0 % [1.0, 10.0]" in html  # the real rate of s1 with its interval
    assert "<th>real purchased</th>" in html and "<td>30.0 %</td>" in html  # the real funnel of code 1
    assert "<figcaption>" in html and "Wilson intervals on both axes" in html


def ab_summary(conversion_a: float, conversion_b: float, n: int = 80, max_steps: int = 0) -> dict:
    """ab_summary.json as harness.sim.ab writes it (the keys the report reads)."""
    per_type = {"3": {"n": 50, "conversion_a": conversion_a, "conversion_b": conversion_b,
                      "delta": conversion_b - conversion_a, "ci": [-0.2, 0.1], "b_only_a_converted": 4,
                      "c_only_b_converted": 1, "p_exact": 0.37, "p_mid": 0.22},
                "12": {"n": 30, "conversion_a": conversion_a, "conversion_b": conversion_b,
                       "delta": conversion_b - conversion_a, "ci": [-0.3, 0.2], "b_only_a_converted": 2,
                       "c_only_b_converted": 1, "p_exact": 1.0, "p_mid": 0.75}}
    arms = {arm: {"variant": variant, "outcomes": {"converted": 0, "left": n - max_steps, "max_steps": max_steps,
                                                   "error": 0}}
            for arm, variant in (("A", "saved_details"), ("B", "worse_saved_details"))}
    return {"kind": "A/B", "shop": "s9", "policy": "persona", "n": n, "alpha": 0.05, "confidence": 0.95,
            "variants": {"A": "saved_details", "B": "worse_saved_details"}, "outcome_source": "store order log",
            "conversion_a": conversion_a, "conversion_b": conversion_b, "delta": conversion_b - conversion_a,
            "ci": [-0.15, 0.02], "mcnemar": {"b_only_a_converted": 6, "c_only_b_converted": 2, "p_exact": 0.29,
                                             "p_mid": 0.18},
            "p_value": 0.18, "significant": False, "verdict": "no significant difference", "per_type": per_type,
            "arms": arms}


def test_ab_run_dir_in_a_subdir(tmp_path):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "ab_summary.json").write_text(json.dumps(ab_summary(0.30, 0.25)))
    html = write_report(tmp_path).read_text()
    # A table of arms: buyers, conversions, CR with its Wilson interval (24/80 = 30.0 %).
    assert "<th>CR [95 % Wilson]</th>" in html and "<td>24</td>" in html and "30.0 % [21.1, 40.8]" in html
    # Per-type effects with their intervals, and the forest plot drawn from the summary.
    assert "type 12 (n=30)" in html and "-0.050 [-0.300, +0.200]" in html
    assert 'src="plots/ab_forest.png"' in html and (tmp_path / "plots" / "ab_forest.png").is_file()
    # No flattened keys.
    for key in ("per_type.3", "mcnemar.p_mid", "b_only_a_converted", "arms.A"):
        assert key not in html


def test_ab_forest_plot_has_one_row_per_type_and_overall(tmp_path, monkeypatch):
    from harness.eval import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda plt, figure, path: figures.append(figure))
    report.plot_forest(report.effect_rows(ab_summary(0.30, 0.25)), tmp_path / "forest.png", "t")
    axis = figures[0].axes[0]
    top_down = sorted(axis.get_yticklabels(), key=lambda tick: -tick.get_position()[1])
    assert [tick.get_text() for tick in top_down] == ["all buyers (n=80)", "type 3 (n=50)", "type 12 (n=30)"]
    intervals = sorted(tuple(segment[:, 0]) for container in axis.containers
                       for segment in container.lines[2][0].get_segments())
    assert intervals == [pytest.approx((-0.3, 0.2)), pytest.approx((-0.2, 0.1)), pytest.approx((-0.15, 0.02))]


def test_ab_where_nobody_converted_says_it_tells_nothing(tmp_path):
    (tmp_path / "ab_summary.json").write_text(json.dumps(ab_summary(0.0, 0.0, max_steps=60)))
    html = write_report(tmp_path).read_text()
    verdicts = html[html.index("<section class='verdicts'>"):html.index("</section>")]
    assert "A/B tells nothing: nobody converted in either arm" in verdicts
    assert "A/B arm A: 60 of 80 buyers ended at max-steps" in verdicts
    assert "<p class='verdict'>A/B tells nothing" in html  # also next to the arms and the forest plot
    assert "no significant difference" not in html


def test_collapsed_agent_verdicts_in_the_report(tmp_path):
    summary = evaluation_summary()
    for row in summary["protocols"]["paper"]["shops"]:
        if row["policy"] == "persona":
            row.update(cr_sim=0.0, cr_sim_ci=[0.0, 0.02], sim_converted=0, outcomes={"converted": 0, "max_steps": 150})
    summary["protocols"]["paper"]["policies"]["persona"]["alignment"] = 0.0
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    verdicts = html[html.index("<section class='verdicts'>"):html.index("</section>")]
    assert "the persona agent collapsed in shop s1: 0 of 200 buyers converted (real rate 5.0 %)" in verdicts
    assert "450 of 600 buyers ended at max-steps" in verdicts
    assert "BEHIND the type_profile baseline on alignment (0.000 vs 0.800)" in verdicts


def test_conversion_plot_draws_wilson_intervals_on_both_axes(tmp_path, monkeypatch):
    from harness.eval import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda plt, figure, path: figures.append(figure))
    rows = evaluation_summary()["protocols"]["paper"]["shops"]
    report.plot_conversion(rows, tmp_path / "c.png", "t")
    axis = figures[0].axes[0]
    drawn = []  # per errorbar (one per shop and policy): its colour, point, and bars by direction
    for container in axis.containers:
        (x,), (y,) = container.lines[0].get_data()
        bars = {}
        for collection in container.lines[2]:
            (start, end), = collection.get_segments()
            horizontal = start[1] == end[1]
            bars["x" if horizontal else "y"] = tuple(float(point[0 if horizontal else 1]) for point in (start, end))
        drawn.append((container.lines[0].get_color(), round(float(x), 6), round(float(y), 6), bars))
    assert len(drawn) == 9
    persona_s2 = [bars for colour, x, y, bars in drawn if colour == report.POLICY_COLOURS["persona"] and x == 0.10]
    assert persona_s2[0]["x"] == pytest.approx((0.06, 0.15))  # the real rate's interval
    assert persona_s2[0]["y"] == pytest.approx((0.08, 0.14))  # the simulated rate's interval
    global_rate = [bars for colour, _, _, bars in drawn if colour == report.POLICY_COLOURS["global_rate"]]
    assert len(global_rate) == 3 and all(set(bars) == {"x"} for bars in global_rate)  # no simulation: no vertical bar


def test_funnels_show_real_next_to_simulated(tmp_path, monkeypatch):
    from harness.eval import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda plt, figure, path: figures.append(figure))
    result = evaluation_summary()["protocols"]["paper"]
    report.plot_funnels(result["real_per_type"], result["per_type"]["types"], tmp_path / "f.png", "t")
    purchased = figures[0].axes[2]
    real, simulated = purchased.containers  # bars of codes 0, 1, 2
    assert [bar.get_height() for bar in real] == [0.04, 0.3, 0.9]
    assert [bar.get_height() for bar in simulated] == [0.05, 0.0, 0.85]  # code 1: no synthetic buyer


def test_codebook_type_table_and_summary(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(evaluation_summary()))
    codebook = tmp_path / "paper" / "codebook"
    codebook.mkdir(parents=True)
    (codebook / "types.json").write_text(json.dumps({"codebook_size": 2, "types": [
        {"code": 1, "n_buyers": 40, "share": 0.2, "conversion_rate": 0.0, "median_events": 4.0,
         "summary": "browses briefly, rarely buys"},
        {"code": 0, "n_buyers": 160, "share": 0.8, "conversion_rate": 0.35, "median_events": 12.0,
         "summary": "buys often"}]}))
    (codebook / "metrics.json").write_text(json.dumps({"n_buyers": 200, "codebook_size": 2, "perplexity": 1.65,
                                                       "active_codes": {"count": 2, "share": 1.0}}))
    html = write_report(tmp_path).read_text()
    assert "<h2>Codebook (paper/codebook)</h2>" in html
    assert html.index("buys often") < html.index("browses briefly, rarely buys")  # by code
    assert "<td>perplexity (effective number of types)</td><td>1.65</td>" in html and "80.0 %" in html


def test_simulation_run_dir(tmp_path):
    summary = {"shop": "s1", "policy": "type_profile", "driver": "http", "buyers": 10, "completed": 10, "converted": 2,
               "conversion_rate": 0.2, "real_conversion_rate": 0.15, "conversion_gap": 0.05,
               "per_type": {"0": {"buyers": 6, "converted": 0, "conversion_rate": 0.0, "real_conversion_rate": 0.02},
                            "3": {"buyers": 4, "converted": 2, "conversion_rate": 0.5, "real_conversion_rate": 0.4}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    assert 'src="plots/per_type_conversion.png"' in html and "type_profile" in html
    assert "<section class='verdicts'>" not in html  # a healthy run: nothing to warn about


def test_nothing_to_report(tmp_path):
    with pytest.raises(ReportError, match="nothing to report"):
        write_report(tmp_path)
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match="summary.json: not valid JSON"):
        write_report(tmp_path)


def test_report_command(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    (tmp_path / "summary.json").write_text(json.dumps(evaluation_summary()))
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").is_file() and "report.html" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["report", str(empty)])
    assert result.exit_code != 0 and "nothing to report" in result.output


def test_real_funnel_per_type_from_events_and_codes(tmp_path):
    """harness.eval.evaluate.real_type_funnels: the real buyers' funnel the report draws in grey."""
    import pandas as pd

    from harness.eval.evaluate import real_type_funnels

    events = pd.DataFrame([  # ids as integers here, as strings in codes: the join compares them as text
        (1, 10, "product_view"), (1, 10, "add_to_cart"), (1, 10, "purchase"),
        (1, 11, "product_view"), (1, 11, "add_to_cart"),
        (1, 12, "search"),
        (2, 20, "product_view"), (2, 20, "purchase"),  # shop 2 is not asked for
    ], columns=["shop_id", "buyer_id", "event_type"])
    events.to_parquet(tmp_path / "events.parquet")
    codes = pd.DataFrame({"shop_id": ["1", "1", "1", "1", "2"], "buyer_id": ["10", "11", "12", "13", "20"],
                          "code": [0, 0, 3, 3, 0]})  # buyer 13 has no event at all
    funnels = real_type_funnels(tmp_path / "events.parquet", codes, ["1"])
    assert funnels == {"0": {"buyers": 2, "viewed_rate": 1.0, "cart_rate": 1.0, "conversion_rate": 0.5},
                       "3": {"buyers": 2, "viewed_rate": 0.0, "cart_rate": 0.0, "conversion_rate": 0.0}}
    assert real_type_funnels(tmp_path / "events.parquet", codes, ["9"]) == {}
