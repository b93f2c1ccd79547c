"""The benchmark report: per-round figures, issue 11's targets across rounds, markdown and plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report

RATES = [25, 50, 100, 200, 400, 800]


def closed(c: int, rps: float, p50: float = 10.0, cpu: float = 5.0) -> dict[str, Any]:
    return {
        "concurrency": c,
        "throughput_rps": rps,
        "latency": {"p50_ms": p50, "mean_ms": p50 + 1},
        "cpu_ms_per_request": cpu,
        "foreign_load": 0.01,
    }


def opened(rate: float, p99: float, kept: bool = True) -> dict[str, Any]:
    return {
        "rate": rate,
        "achieved_rps": rate if kept else rate * 0.7,
        "kept": kept,
        "latency": {"p50_ms": p99 / 3, "p95_ms": p99 / 2, "p99_ms": p99},
        "cpu_ms_per_request": 4.0,
    }


def system(
    c8: float,
    lone: float,
    *,
    c64: float | None = None,
    keeps_up_to: float = 800,
    p99: float = 20.0,
    cpu8: float = 2.0,
    rss_idle: float = 300e6,
    cold: float = 2.0,
) -> dict[str, Any]:
    """A system's results as the harness records them: rates after the first unkept one were
    never offered."""
    runs = []
    for rate in RATES:
        kept = rate <= keeps_up_to
        runs.append(opened(rate, p99 * (1 + rate / 100) if kept else 5000.0, kept))
        if not kept:
            break
    return {
        "cold_start_s": cold,
        "open_rates_planned": RATES,
        "closed": [
            closed(1, 1000 / lone, lone),
            closed(8, c8, cpu=cpu8),
            closed(64, c8 * 1.2 if c64 is None else c64),
        ],
        "open": runs,
        "memory_idle": {"rss_bytes": rss_idle},
        "memory_loaded": {"rss_bytes": rss_idle * 1.1, "pss_bytes": rss_idle},
    }


def one_round(**lungwatch: Any) -> dict[str, Any]:
    lw: dict[str, Any] = {
        "c8": 900.0,
        "lone": 2.0,
        "c64": 1600.0,
        "cpu8": 1.5,
        "rss_idle": 350e6,
        "cold": 3.0,
        "p99": 15.0,
    }
    lw.update(lungwatch)
    return {
        "order": ["mlflow", "bentoml_onnx"],
        "systems": {
            "mlflow": system(80.0, 9.0, keeps_up_to=50, cpu8=14.0, rss_idle=480e6, cold=4.0),
            "bentoml_onnx": system(
                800.0, 1.2, c64=900.0, keeps_up_to=400, cpu8=1.2, rss_idle=230e6, cold=1.5
            ),  # fmt: skip
            "bentoml_sklearn": system(450.0, 6.0, keeps_up_to=200, cpu8=2.2, rss_idle=290e6),
            "lungwatch": system(**lw),
            "telemetry_off": system(lw["c8"] / 0.95, 1.9, c64=lw["c64"] / 0.95),
        },
    }


def targets(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in report.summarize(rounds)["targets"]}


def test_figures_of_one_system() -> None:
    f = report.figures(system(500.0, 2.0, keeps_up_to=100, cpu8=1.7, rss_idle=250e6, cold=1.25))
    assert f["throughput_c8"] == 500.0 and f["cpu_ms_c8"] == 1.7
    assert f["one_at_a_time_ms"] == 2.0  # the c=1 run's p50, not the saturation run's
    assert f["saturation_rps"] == 600.0 and f["saturation_concurrency"] == 64
    assert f["max_kept_rate"] == 100.0
    assert (f["kept_at_100"], f["kept_at_200"]) == (1.0, 0.0)
    # 400 and 800 were never offered: not kept, and no latency to report
    assert (f["kept_at_400"], f["kept_at_800"]) == (0.0, 0.0)
    assert "p99_at_400_ms" not in f and f["p99_at_200_ms"] == 5000.0
    assert f["rss_idle_mb"] == 250.0 and f["cold_start_s"] == 1.25


def test_highest_rate_kept_counts_only_the_unbroken_ladder() -> None:
    result = system(500.0, 2.0)
    result["open"][1]["kept"] = False  # 50 not kept, though a later run says otherwise
    assert report.figures(result)["max_kept_rate"] == 25.0
    result["open"][0]["kept"] = False
    assert report.figures(result)["max_kept_rate"] == 0.0


def test_cpu_split_only_for_lungwatch_processes() -> None:
    result = system(500.0, 2.0)
    result["closed"][0]["cpu_ms_per_request_by_process"] = {
        "lungwatch-gateway": 1.0,
        "lungwatch-model-server": 0.5,
    }
    result["closed"][1]["cpu_ms_per_request_by_process"] = {"bentoml_onnx-bentoml": 1.2}
    f = report.figures(result)
    assert (f["cpu_ms_c1_gateway"], f["cpu_ms_c1_model_server"]) == (1.0, 0.5)
    assert not any(k.startswith("cpu_ms_sat_") for k in f)


def test_every_target_of_issue_11_from_one_round() -> None:
    t = targets([one_round()])
    assert t["c8_vs_bentoml"]["value"]["median"] == pytest.approx(900 / 800)
    assert t["c8_vs_bentoml"]["met"] is True
    assert t["c64_vs_bentoml"]["value"]["median"] == pytest.approx(1600 / 900)
    assert t["c64_vs_bentoml"]["met"] is True
    assert t["rates_vs_bentoml"]["value"]["median"] == 400.0  # 800 kept against 400
    assert t["rates_vs_bentoml"]["met"] is True
    assert t["p99_at_50_vs_bentoml"]["value"]["median"] == pytest.approx(15 / 20)
    assert t["p99_at_200_vs_bentoml"]["met"] is True
    assert t["one_at_a_time_vs_bentoml"]["value"]["median"] == pytest.approx(2 / 1.2)
    assert t["one_at_a_time_vs_bentoml"]["met"] is True
    assert t["one_at_a_time_vs_mlflow"]["value"]["median"] == pytest.approx(2 / 9)
    assert t["cpu_c8_vs_bentoml"]["value"]["median"] == pytest.approx(1.25)
    assert t["telemetry_overhead"]["value"]["median"] == pytest.approx(0.95)
    assert t["rss_vs_bentoml"]["value"]["median"] == pytest.approx(120.0)  # MB over BentoML's
    assert t["rss_vs_bentoml"]["met"] is False
    assert t["cold_start_vs_bentoml"]["value"]["median"] == pytest.approx(2.0)
    assert t["cold_start_vs_bentoml"]["met"] is True  # the bound itself is met
    assert t["c8_vs_bentoml_sklearn"]["value"]["median"] == pytest.approx(2.0)
    assert t["one_at_a_time_vs_bentoml_sklearn"]["met"] is True
    assert len(t) == len(report.TARGETS) == 13


def test_targets_are_medians_of_within_round_ratios() -> None:
    rounds = [one_round(c8=c8) for c8 in (700.0, 960.0, 1000.0)]
    rounds[1]["systems"]["bentoml_onnx"]["closed"][1]["throughput_rps"] = 1200.0
    c8 = targets(rounds)["c8_vs_bentoml"]
    assert c8["per_round"] == pytest.approx([700 / 800, 960 / 1200, 1000 / 800])
    assert c8["value"]["median"] == pytest.approx(0.875) and c8["met"] is False


def test_p99_target_fails_when_lungwatch_did_not_keep_the_rate() -> None:
    t = targets([one_round(keeps_up_to=100)])
    # Lungwatch broke at 200 (a p99 exists, of the backlog) and never got to 400
    assert t["p99_at_200_vs_bentoml"]["met"] is False
    assert t["p99_at_200_vs_bentoml"]["note"] == "lungwatch did not keep 200 req/s"
    assert t["rates_vs_bentoml"]["value"]["median"] == -300.0
    assert t["rates_vs_bentoml"]["met"] is False
    t = targets([one_round(keeps_up_to=25)])
    assert t["p99_at_200_vs_bentoml"]["value"] is None  # never offered
    assert t["p99_at_200_vs_bentoml"]["met"] is False


def test_p99_target_met_when_only_bentoml_broke() -> None:
    round_ = one_round()
    round_["systems"]["bentoml_onnx"] = system(800.0, 1.2, keeps_up_to=100)
    t = targets([round_])
    assert t["p99_at_200_vs_bentoml"]["met"] is True
    assert t["p99_at_200_vs_bentoml"]["note"] == "bentoml_onnx did not keep 200 req/s"


def test_missing_system_leaves_targets_unmeasured() -> None:
    rounds = [{"order": ["mlflow"], "systems": {"mlflow": system(90, 9.0)}}]
    assert all(t["met"] is None for t in report.summarize(rounds)["targets"])


LABELS = {
    "mlflow": "(1) bare mlflow",
    "bentoml_onnx": "(2) BentoML, ONNX",
    "bentoml_sklearn": "(3) BentoML, scikit-learn",
    "lungwatch": "(4) Lungwatch",
    "telemetry_off": "(5) off",
}


def data_for(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    meta = {
        "date": "2026-11-30 15:00 UTC",
        "commit": "abc1234",
        "command": "python -m bench",
        "machine": "2 logical CPUs",
        "quick": False,
        "model": "models:/lungwatch-risk@champion v1",
        "labels": LABELS,
        "rounds": len(rounds),
        "closed_seconds": 6,
        "open_seconds": 10,
        "concurrencies": [1, 8, 64],
        "rates": RATES,
        "bentoml": ["bentoml==1.4.40", "onnxruntime==1.32.0"],
        "onnx_sha256": "0123456789abcdef",
    }
    return {"meta": meta, "rounds": rounds, "summary": report.summarize(rounds)}


def test_markdown_shows_targets_systems_and_unkept_rates() -> None:
    text = report.markdown(data_for([one_round(keeps_up_to=100)]), plot="results-p99.png")
    assert "## Targets (issue 11)" in text
    assert "| closed loop, 8 connections: Lungwatch ≥ BentoML | 1.12× | **met** |" in text, text
    assert (
        "| open loop 200 req/s: Lungwatch p99 ≤ BentoML's | 83.33× "
        "(lungwatch did not keep 200 req/s) | **not met** |"
    ) in text
    assert "| RSS idle, all server processes: Lungwatch ≤ BentoML's + 100 MB | 120.00 MB |" in text
    assert "![p99 latency against offered load, every system](results-p99.png)" in text
    assert "bentoml==1.4.40, onnxruntime==1.32.0" in text
    mlflow_open = next(
        line for line in text.splitlines() if line.startswith("| (1) bare mlflow | 8.3")
    )
    assert "† 70 req/s" in mlflow_open and mlflow_open.endswith("| not run | not run | not run |")
    # per system: c8, c64, one at a time, p99 at 50 and 200, highest kept, CPU, cold start, RSS
    assert (
        "| (2) BentoML, ONNX | 800 | 900 | 1.20 | 30.0 | 60.0 | 400 | 1.20 | 4.00 | 1.50 | 230 |"
        in text
    )
    assert "| (1) bare mlflow | 80 | 96 | 9.00 | 30.0 | — | 50 |" in text


def test_markdown_without_plot_or_split() -> None:
    text = report.markdown(data_for([one_round()]))
    assert "![" not in text and "Where Lungwatch's server CPU goes" not in text


def test_markdown_warns_when_the_code_changed_during_the_run() -> None:
    rounds = [one_round(), one_round()]
    for r in rounds:
        for result in r["systems"].values():
            result["code_digest"] = "aaaa"
    assert "code digest (api/, model/, telemetry/): aaaa" in report.markdown(data_for(rounds))
    rounds[1]["systems"]["lungwatch"]["code_digest"] = "bbbb"
    text = report.markdown(data_for(rounds))
    assert "the code changed while the benchmark ran** (2 versions" in text


def test_p99_curves_mark_unkept_rates() -> None:
    curves = report.p99_curves(data_for([one_round(keeps_up_to=100)]))
    assert set(curves) == set(LABELS)
    assert curves["lungwatch"] == [
        (25.0, pytest.approx(18.75), True),
        (50.0, pytest.approx(22.5), True),
        (100.0, pytest.approx(30.0), True),
        (200.0, 5000.0, False),
    ]
    assert [p[0] for p in curves["mlflow"]] == [25.0, 50.0, 100.0]


def test_p99_curves_end_where_most_rounds_broke() -> None:
    # Lungwatch broke at 400 in two rounds of three; the one round that reached 800 is no curve
    rounds = [one_round(keeps_up_to=200), one_round(keeps_up_to=200), one_round()]
    points = report.p99_curves(data_for(rounds))["lungwatch"]
    assert [(p[0], p[2]) for p in points][-2:] == [(200.0, True), (400.0, False)]


def test_write_produces_json_markdown_and_plot(tmp_path: Path) -> None:
    md_path, json_path = report.write(data_for([one_round()]), tmp_path / "out", "results")
    plot = tmp_path / "out" / "results-p99.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](results-p99.png)" in md_path.read_text()
    loaded = json.loads(json_path.read_text())
    assert loaded["summary"]["targets"][0]["key"] == "c8_vs_bentoml"


def test_write_without_open_loop_runs_draws_no_plot(tmp_path: Path) -> None:
    round_ = one_round()
    for result in round_["systems"].values():
        result["open"] = []
    md_path, _ = report.write(data_for([round_]), tmp_path, "quick")
    assert not (tmp_path / "quick-p99.png").exists() and "![" not in md_path.read_text()
