"""The benchmark report: per-round figures, targets across rounds, the markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report


def closed(c: int, rps: float, p50: float = 10.0, cpu: float = 5.0) -> dict[str, Any]:
    return {
        "concurrency": c,
        "throughput_rps": rps,
        "latency": {"p50_ms": p50, "mean_ms": p50 + 1},
        "cpu_ms_per_request": cpu,
        "cpu_ms_per_request_by_process": {"x-model-server": cpu - c, "x-gateway": float(c)},
        "foreign_load": 0.01,
    }


def opened(
    rate: float, p99: float, kept: bool = True, achieved: float | None = None
) -> dict[str, Any]:
    return {
        "rate": rate,
        "achieved_rps": rate if achieved is None else achieved,
        "kept": kept,
        "latency": {"p50_ms": p99 / 3, "p95_ms": p99 / 2, "p99_ms": p99},
        "cpu_ms_per_request": 4.0,
    }


def system(
    sat: float, lone: float, p99_50: float, rss: float, *, keeps_100: bool = True
) -> dict[str, Any]:
    return {
        "closed": [closed(1, 70.0, lone), closed(4, sat), closed(16, sat - 5)],
        "open": [
            opened(25, p99_50 / 2),
            opened(50, p99_50),
            opened(100, 900.0, kept=keeps_100, achieved=None if keeps_100 else 78.0),
        ],
        "memory_loaded": {"rss_bytes": rss, "pss_bytes": rss * 0.8},
        "memory_idle": {"rss_bytes": rss * 0.9},
    }


def three_rounds() -> list[dict[str, Any]]:
    rounds = []
    for sat_l, sat_m in [(400, 90), (300, 100), (380, 95)]:
        rounds.append(
            {
                "order": ["mlflow", "lungwatch"],
                "systems": {
                    "mlflow": system(sat_m, 9.0, 23.0, 490e6, keeps_100=False),
                    "lungwatch": system(sat_l, 10.0, 14.0, 400e6),
                    "telemetry_off": system(sat_l / 0.95, 9.5, 13.0, 390e6),
                },
            }
        )
    return rounds


def test_figures_pick_saturation_one_at_a_time_and_rates() -> None:
    f = report.figures(system(250.0, 12.0, 30.0, 4e8))
    assert f["saturation_rps"] == 250.0 and f["saturation_concurrency"] == 4
    assert f["one_at_a_time_ms"] == 12.0  # the c=1 run's p50, not the saturation run's
    assert f["p99_at_50_ms"] == 30.0 and f["p99_at_100_ms"] == 900.0
    assert f["kept_at_100"] == 1.0
    assert f["rss_bytes"] == 4e8 and f["cpu_ms_sat"] == 5.0
    assert (f["cpu_ms_c1_gateway"], f["cpu_ms_c1_model_server"]) == (1.0, 4.0)
    assert (f["cpu_ms_sat_gateway"], f["cpu_ms_sat_model_server"]) == (4.0, 1.0)


def test_summary_evaluates_each_target_from_round_ratios() -> None:
    summary = report.summarize(three_rounds())
    targets = {t["key"]: t for t in summary["targets"]}
    sat = targets["saturation_vs_mlflow"]
    assert sat["per_round"] == pytest.approx([400 / 90, 3.0, 4.0])
    assert sat["value"]["median"] == pytest.approx(4.0) and sat["met"] is True
    assert targets["p99_at_50_vs_mlflow"]["value"]["median"] == pytest.approx(14 / 23)
    assert targets["p99_at_50_vs_mlflow"]["met"] is True
    assert targets["one_at_a_time_vs_mlflow"]["value"]["median"] == pytest.approx(1.0)
    assert targets["telemetry_overhead"]["value"]["median"] == pytest.approx(0.95)
    assert targets["rss_vs_mlflow"]["met"] is True
    lungwatch = summary["systems"]["lungwatch"]["saturation_rps"]
    assert (lungwatch["median"], lungwatch["min"], lungwatch["max"]) == (380, 300, 400)


def test_missing_system_leaves_targets_unmeasured() -> None:
    rounds = [{"order": ["mlflow"], "systems": {"mlflow": system(90, 9.0, 23.0, 490e6)}}]
    summary = report.summarize(rounds)
    assert all(t["met"] is None for t in summary["targets"])


def data_for(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    meta = {
        "date": "2026-11-26 08:00 UTC",
        "commit": "abc1234",
        "command": "python -m bench",
        "machine": "2 logical CPUs",
        "quick": False,
        "model": "models:/lungwatch-risk@champion v1",
        "labels": {
            "mlflow": "(1) bare mlflow",
            "lungwatch": "(2) Lungwatch",
            "telemetry_off": "(3) off",
        },
        "rounds": len(rounds),
        "closed_seconds": 8,
        "open_seconds": 12,
        "concurrencies": [1, 4, 16, 64],
        "rates": [25, 50, 100, 200],
    }
    return {"meta": meta, "rounds": rounds, "summary": report.summarize(rounds)}


def test_markdown_shows_verdicts_spreads_and_unkept_rates() -> None:
    text = report.markdown(data_for(three_rounds()))
    assert "| saturation throughput (2) ≥ 4× (1) | 4.00 (3.00–4.44)× | **met** |" in text
    assert "| one request at a time (2) ≤ (1) + 2 ms | 1.00 ms | **met** |" in text
    mlflow_open = next(
        line
        for line in text.splitlines()
        if line.startswith("| (1) bare mlflow | 3.8 / 5.8 / 11.5 |")
    )
    assert "† 78 req/s" in mlflow_open and mlflow_open.endswith("| not run |")
    assert "| (2) Lungwatch | 380 (300–400) | 4 |" in text
    assert "**not met**" not in text
    assert "other load on the machine over all 27 runs: median 1 %, worst 1 %; 27 runs" in text


def test_cpu_split_table_only_when_measured() -> None:
    text = report.markdown(data_for(three_rounds()))
    assert "| (2) Lungwatch | 1.00 | 4.00 | 4.00 | 1.00 |" in text
    rounds = three_rounds()
    for r in rounds:
        for result in r["systems"].values():
            for run in result["closed"]:
                del run["cpu_ms_per_request_by_process"]
    assert "Where the server CPU goes" not in report.markdown(data_for(rounds))


def test_a_quiet_machine_shows_zero_other_load() -> None:
    rounds = three_rounds()
    for r in rounds:
        for result in r["systems"].values():
            for run in result["closed"]:
                run["foreign_load"] = 0.0
    summary = report.summarize(rounds)
    assert summary["systems"]["mlflow"]["foreign_load_max"]["median"] == 0.0
    assert "| 0 |" in report.markdown(data_for(rounds))


def test_markdown_says_not_met() -> None:
    rounds = three_rounds()
    for r in rounds:
        r["systems"]["lungwatch"]["memory_loaded"]["rss_bytes"] = 900e6
    assert "| RSS (2) ≤ 1.2× (1) | 1.84× | **not met** |" in report.markdown(data_for(rounds))


def test_markdown_warns_when_the_code_changed_during_the_run() -> None:
    rounds = three_rounds()
    for r in rounds:
        for result in r["systems"].values():
            result["code_digest"] = "aaaa"
    assert "code digest (api/, model/, telemetry/): aaaa" in report.markdown(data_for(rounds))
    rounds[2]["systems"]["lungwatch"]["code_digest"] = "bbbb"
    text = report.markdown(data_for(rounds))
    assert "the code changed while the benchmark ran** (2 versions" in text
    assert "aaaa, bbbb" in text


def test_write_produces_json_and_markdown(tmp_path: Path) -> None:
    md_path, json_path = report.write(data_for(three_rounds()), tmp_path / "out", "results")
    assert md_path.read_text().startswith("# Lungwatch benchmark (full run)")
    loaded = json.loads(json_path.read_text())
    assert loaded["summary"]["targets"][0]["key"] == "saturation_vs_mlflow"
    assert len(loaded["rounds"]) == 3
