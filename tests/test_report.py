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
                          "cr_real_ci": [real - 0.04, real + 0.05], "alignment": 0.9, "store_agreement": 1.0})
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


def test_ab_run_dir_in_a_subdir(tmp_path):
    from harness.eval.report import _pyplot

    plt = _pyplot()
    (tmp_path / "ab").mkdir()
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    figure.savefig(tmp_path / "ab" / "ab_effects.png")
    plt.close(figure)
    (tmp_path / "ab" / "ab_summary.json").write_text(json.dumps({"difference": 0.031, "ci": [0.01, 0.05], "p_value": 0.002}))
    html = write_report(tmp_path).read_text()
    assert 'src="plots/ab_effects.png"' in html and (tmp_path / "plots" / "ab_effects.png").is_file()
    assert "p_value" in html and "0.002" in html


def test_simulation_run_dir(tmp_path):
    summary = {"shop": "s1", "policy": "type_profile", "driver": "http", "buyers": 10, "completed": 10, "converted": 2,
               "conversion_rate": 0.2, "real_conversion_rate": 0.15, "conversion_gap": 0.05,
               "per_type": {"0": {"buyers": 6, "converted": 0, "conversion_rate": 0.0, "real_conversion_rate": 0.02},
                            "3": {"buyers": 4, "converted": 2, "conversion_rate": 0.5, "real_conversion_rate": 0.4}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    html = write_report(tmp_path).read_text()
    assert 'src="plots/per_type_conversion.png"' in html and "type_profile" in html


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
