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


# --- issue 23: shadow, canary and the hot swap ----------------------------------------------
def rollout_system(
    c8: float, p99_at_50: float, *, challenger_share: float = 0.0, shadow: bool = False
) -> dict[str, Any]:
    """A rollout system as the harness records it: the short loads, answers counted by the
    version they name, the gateway's rollout counters per run."""

    def versions(ok: int) -> dict[str, int]:
        challenger = round(ok * challenger_share)
        return {"1": ok - challenger, **({"2": challenger} if challenger else {})}

    def counters(ok: int) -> dict[str, float]:
        if shadow:
            return {"shadow_scored": float(ok - 3), "shadow_dropped": 3.0, "shadow_queue_rows": 0}
        return {"canary_fallbacks": 2.0}

    closed_runs = []
    for c, rps in ((8, c8), (64, c8 * 1.1)):
        run = {**closed(c, rps), "ok": 1000, "versions": versions(1000)}
        closed_runs.append({**run, "rollout": counters(1000)})
    open_runs = []
    for rate, p99 in ((50, p99_at_50), (200, p99_at_50 * 2)):
        run = {**opened(rate, p99), "ok": 500, "versions": versions(500)}
        open_runs.append({**run, "rollout": counters(500)})
    return {
        "cold_start_s": 3.0,
        "loads": "short",
        "open_rates_planned": [50, 200],
        "closed": closed_runs,
        "open": open_runs,
        "memory_idle": {"rss_bytes": 360e6},
        "served_versions": {"champion": "1", "challenger": "2"},
    }


def requests_at(
    rate: float, seconds: float, latency: float, version: str, start: float = 100.0
) -> list[list[Any]]:
    """Records of an evenly paced run: [sent, latency, ok, version] per request."""
    step = 1 / rate
    return [[start + i * step, latency, 1, version] for i in range(int(seconds * rate))]


def swap_run() -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """20 s at 100 req/s, 5 ms a request; @champion moved to v2 at 5 s (requests sent from 5
    to 8 s take 50 ms; v2 answers those sent from 7 s) and back at 12 s (v1 answers those sent
    from 13 s)."""
    records = requests_at(100, 20, 0.005, "1")
    for r in records:
        t = r[0] - 100
        if 5 <= t < 8:
            r[1] = 0.050
        if 7 <= t < 13:
            r[3] = "2"
    moves = [
        {"from": "1", "to": "2", "moved_at": 105.0, "served_seen_at": 106.9},
        {"from": "2", "to": "1", "moved_at": 112.0, "served_seen_at": 113.2},
    ]
    return records, moves


def test_swap_windows_run_from_the_move_to_a_second_after_the_new_version_answered() -> None:
    records, moves = swap_run()
    s = report.swap_summary(records, moves, tail_s=1.0)
    first, back = s["windows"]
    # the first v2 answer: sent at 7 s, slow, so it ends at 7.05 s
    assert first["answered"] and first["seconds_to_answer"] == pytest.approx(2.05)
    assert first["window_s"] == pytest.approx([5.0, 8.05])
    assert back["seconds_to_answer"] == pytest.approx(1.005)
    assert back["window_s"] == pytest.approx([12.0, 14.005])
    assert first["served_seen_s"] == pytest.approx(1.9)
    # sent 5.00-8.05 and 12.00-14.00 s at 100 req/s, both ends included
    assert s["requests_during"] == 306 + 201 and s["requests_outside"] == 2000 - 507
    assert s["p99_during_ms"] == pytest.approx(50.0)  # 300 slow among 507: the p99 is slow
    assert s["p99_outside_ms"] == pytest.approx(5.0)
    assert s["p99_ratio"] == pytest.approx(10.0)
    assert s["versions"] == {"1": 1400, "2": 600} and s["unexpected_versions"] == 0
    assert first["old_version_after_new"] == back["old_version_after_new"] == 0
    assert s["errors_during"] == s["errors_outside"] == 0
    # half-second buckets of send time: the slow stretch is 5-8 s
    assert len(s["timeline"]) == 40
    assert s["timeline"][9] == [4.5, 50.0, 0.0, pytest.approx(5.0)]
    assert s["timeline"][10] == [5.0, 50.0, 0.0, pytest.approx(50.0)]
    assert s["timeline"][16] == [8.0, 50.0, 0.0, pytest.approx(5.0)]


def test_swap_counts_failures_stale_and_foreign_versions() -> None:
    records, moves = swap_run()
    by_time = {round(r[0] - 100, 2): r for r in records}
    by_time[7.5][3] = "1"  # sent after v2 answered, still answered by v1
    by_time[6.0][2] = 0  # failed during the first swap
    by_time[18.0][2] = 0  # failed outside
    by_time[19.0][3] = "9"  # a version nobody moved to
    s = report.swap_summary(records, moves, tail_s=1.0)
    assert s["windows"][0]["old_version_after_new"] == 1
    assert (s["errors_during"], s["errors_outside"]) == (1, 1)
    assert s["unexpected_versions"] == 1


def test_a_move_never_answered_spans_the_rest_of_the_run() -> None:
    records = requests_at(100, 10, 0.005, "1")
    moves = [{"from": "1", "to": "2", "moved_at": 104.0, "served_seen_at": None}]
    s = report.swap_summary(records, moves, tail_s=1.0)
    (window,) = s["windows"]
    assert not window["answered"] and window["seconds_to_answer"] is None
    assert window["window_s"] == pytest.approx([4.0, 9.99])
    assert s["requests_during"] == 600 and s["p99_ratio"] == pytest.approx(1.0)
    assert report.swap_summary([], moves, 1.0) == {"tail_s": 1.0, "windows": []}


def hot_swap_result(records: list[list[Any]], moves: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cold_start_s": 3.0,
        "loads": "hot_swap",
        "memory_idle": {"rss_bytes": 350e6},
        "hot_swap": {
            "rate": 200,
            "achieved_rps": 199.0,
            "kept": True,
            "errors": 0,
            "foreign_load": 0.02,
            "cpu_ms_per_request": 1.4,
            "swaps": report.swap_summary(records, moves, 1.0),
        },
    }


def rollout_round(shadow_c8: float = 810.0, shadow_p99: float = 16.5) -> dict[str, Any]:
    round_ = one_round()
    round_["systems"]["shadow"] = rollout_system(shadow_c8, shadow_p99, shadow=True)
    round_["systems"]["canary"] = rollout_system(720.0, 18.0, challenger_share=0.5)
    round_["systems"]["hot_swap"] = hot_swap_result(*swap_run())
    return round_


def rollout_targets(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["key"]: t for t in report.summarize(rounds)["rollout_targets"]}


def test_figures_of_rollout_systems() -> None:
    f = report.figures(rollout_system(800.0, 20.0, challenger_share=0.5))
    assert f["challenger_share_c8"] == 0.5 and f["challenger_share_at_50"] == 0.5
    assert f["canary_fallbacks_c8"] == 2.0 and "shadow_scored_share_c8" not in f
    assert "max_kept_rate" not in f  # 50 and 200 req/s are no ladder
    assert f["kept_at_200"] == 1.0 and "p99_at_25_ms" not in f
    f = report.figures(rollout_system(800.0, 20.0, shadow=True))
    assert f["challenger_share_c8"] == 0.0  # a shadow never answers with the challenger
    assert f["shadow_scored_share_c8"] == pytest.approx(0.997)
    assert (f["shadow_dropped_c8"], f["shadow_failed_c8"]) == (3.0, 0.0)


def test_figures_of_the_hot_swap() -> None:
    f = report.figures(hot_swap_result(*swap_run()))
    assert f["swap_p99_ratio"] == pytest.approx(10.0)
    assert f["swap_seconds_to_answer_max"] == pytest.approx(2.05)
    assert (f["swap_moves"], f["swap_unanswered"], f["swap_errors"]) == (2.0, 0.0, 0.0)
    assert f["foreign_load_max"] == 0.02 and "throughput_c8" not in f


def test_rollout_targets_are_within_round_ratios_against_lungwatch_alone() -> None:
    rounds = [rollout_round(), rollout_round(shadow_c8=700.0, shadow_p99=40.0)]
    rounds[1]["systems"]["lungwatch"]["closed"][1]["throughput_rps"] = 800.0
    t = rollout_targets(rounds)
    assert t["shadow_c8"]["per_round"] == pytest.approx([810 / 900, 700 / 800])
    assert t["shadow_c8"]["met"] is True  # median 0.8875 ≥ 0.85
    # Lungwatch's p99 at 50 req/s is 15 × 1.5 = 22.5 ms in the helper
    assert t["shadow_p99_at_50"]["per_round"] == pytest.approx([16.5 / 22.5, 40 / 22.5])
    assert t["shadow_p99_at_50"]["value"]["median"] == pytest.approx(1.2556, abs=1e-4)
    assert t["shadow_p99_at_50"]["met"] is False
    assert t["hot_swap_p99"]["per_round"] == pytest.approx([10.0, 10.0])
    assert t["hot_swap_p99"]["met"] is False and "note" not in t["hot_swap_p99"]
    ratios = {r["text"]: r for r in report.summarize(rounds)["rollout_ratios"]}
    canary = ratios["canary at 50 %: closed loop 8 connections, throughput canary / alone"]
    assert canary["per_round"] == pytest.approx([720 / 900, 720 / 800])
    assert len(ratios) == len(report.ROLLOUT_RATIOS)


def test_shadow_p99_target_fails_when_the_shadow_did_not_keep_50() -> None:
    round_ = rollout_round()
    round_["systems"]["shadow"]["open"][0]["kept"] = False
    t = rollout_targets([round_])["shadow_p99_at_50"]
    assert t["met"] is False and t["note"] == "shadow did not keep 50 req/s"


def test_hot_swap_met_and_failed_outright_when_a_move_is_never_answered() -> None:
    records, moves = swap_run()
    for r in records:
        r[1] = min(r[1], 0.009)  # during the swaps at most 9 ms against 5 ms outside
    round_ = rollout_round()
    round_["systems"]["hot_swap"] = hot_swap_result(records, moves)
    t = rollout_targets([round_])["hot_swap_p99"]
    assert t["value"]["median"] == pytest.approx(1.8) and t["met"] is True
    for r in records:
        r[3] = "1"  # v2 never answered: the first move never took
    round_["systems"]["hot_swap"] = hot_swap_result(records, moves)
    round_["systems"]["hot_swap"]["hot_swap"]["errors"] = 2
    t = rollout_targets([round_])["hot_swap_p99"]
    assert t["met"] is False
    assert t["note"] == "1 move(s) never answered by the new version; 2 failed request(s)"


def test_rollout_targets_unmeasured_without_the_rollout_systems() -> None:
    assert all(t["met"] is None for t in rollout_targets([one_round()]).values())
    text = report.markdown(data_for([one_round()]))
    assert "## Rollout (issue 23)" in text and "### Hot swap" not in text


def test_markdown_shows_the_rollout_section() -> None:
    labels = {
        **LABELS,
        "shadow": "(8) shadow",
        "canary": "(9) canary",
        "hot_swap": "(10) hot swap",
    }
    data = data_for([rollout_round()])
    data["meta"]["labels"] = labels
    data["meta"]["challenger"] = "models:/lungwatch-risk@challenger v2 (seed 7)"
    text = report.markdown(data)
    assert (
        "| shadow at 100 %: closed loop 8 connections, throughput shadow / alone ≥ 0.85 "
        "| 0.90× | **met** |"
    ) in text
    assert "| hot swap under 200 req/s: p99 of requests sent during the swaps" in text
    assert (
        "| canary at 50 %: closed loop 8 connections, throughput canary / alone | 0.80× |" in text
    )
    assert "| (9) canary | 50 % | 50 % | — | — | — / — / — | 2 |" in text
    assert "| (8) shadow | 0 % | 0 % | 1.00 | 0.99 | 3 / 0 / 0 | 0 |" in text
    assert (
        "| 1 | v1→v2 2.0, v2→v1 1.0 | 507 / 1493 | 50.0 / 5.0 | 50.0 / 5.0 | 10.00× | 0 | 0 |"
    ) in text
    assert "second version (the challenger of (8) and (9)" in text
    # the hot swap ran no ladder: it has no row in the per-system tables
    assert "| (10) hot swap |" not in text
    assert "| (8) shadow | 810 | 891 |" in text


def test_quality_target_is_lungwatch_over_quality_off_in_the_same_round() -> None:
    rounds = [rollout_round(), rollout_round()]
    # (11) answers 8 connections at 930 and 960 req/s; Lungwatch at 900 and 800.
    rounds[0]["systems"]["quality_off"] = rollout_system(930.0, 14.0)
    rounds[1]["systems"]["quality_off"] = rollout_system(960.0, 14.0)
    rounds[1]["systems"]["lungwatch"]["closed"][1]["throughput_rps"] = 800.0
    summary = report.summarize(rounds)
    (target,) = summary["quality_targets"]
    assert target["per_round"] == pytest.approx([900 / 930, 800 / 960])
    assert target["met"] is False  # median 0.9005 < 0.95
    rounds[1]["systems"]["lungwatch"]["closed"][1]["throughput_rps"] = 950.0
    (target,) = report.summarize(rounds)["quality_targets"]
    assert target["met"] is True  # median of 0.968 and 0.990
    data = data_for(rounds)
    data["meta"]["labels"] = {**LABELS, "quality_off": "(11) quality off"}
    text = report.markdown(data)
    assert "## Model quality (issue 24)" in text
    assert "| model-quality monitoring: closed loop 8 connections, throughput on / off" in text
    assert "throughput on / off ≥ 0.95 | 0.98 (0.97–0.99)× | **met** |" in text
    assert "| model-quality monitoring: open loop 50 req/s, p99 on / off | 1.61× |" in text


def test_quality_section_absent_without_quality_off() -> None:
    summary = report.summarize([one_round()])
    assert summary["quality_targets"][0]["met"] is None
    assert "(issue 24)" not in report.markdown(data_for([one_round()]))
