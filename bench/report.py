"""From per-round measurements to figures, within-round ratios, targets, markdown and JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devtools.stats import (
    Spread,
    Target,
    evaluate_target,
    per_round_ratios,
    percentile,
    spread,
    verdict,
)

LUNGWATCH, TELEMETRY_OFF, MLFLOW = "lungwatch", "telemetry_off", "mlflow"
BENTOML, BENTOML_SKLEARN = "bentoml_onnx", "bentoml_sklearn"
SAMPLED = "sampled"  # full telemetry except that 10 % of traces are sampled
# Issue 23: (4) with a challenger shadowed at 100 % or answering a 50 % canary, and (4) while
# its @champion alias is moved to another version and back.
SHADOW, CANARY, HOT_SWAP = "shadow", "canary", "hot_swap"
# Issue 24: (4) with the per-row CBPE and data-quality counting turned off.
QUALITY_OFF = "quality_off"

# Issue 11's targets, all inside one round with full telemetry on and every system serving the
# same registered artifact; "BentoML" alone is BentoML serving the same ONNX file. System keys
# are bench.systems.SYSTEMS' keys.
TARGETS: tuple[Target, ...] = (
    Target(
        "c8_vs_bentoml",
        "closed loop, 8 connections: Lungwatch ≥ BentoML",
        LUNGWATCH,
        BENTOML,
        "throughput_c8",
        1.0,
        at_least=True,
    ),
    Target(
        "c64_vs_bentoml",
        "closed loop, 64 connections: Lungwatch ≥ 1.5× BentoML",
        LUNGWATCH,
        BENTOML,
        "throughput_c64",
        1.5,
        at_least=True,
    ),
    Target(
        "rates_vs_bentoml",
        "open loop: Lungwatch keeps every rate BentoML keeps (highest rate kept, difference)",
        LUNGWATCH,
        BENTOML,
        "max_kept_rate",
        0.0,
        at_least=True,
        difference=True,
        unit=" req/s",
    ),
    Target(
        "p99_at_50_vs_bentoml",
        "open loop 50 req/s: Lungwatch p99 ≤ BentoML's",
        LUNGWATCH,
        BENTOML,
        "p99_at_50_ms",
        1.0,
        at_least=False,
    ),
    Target(
        "p99_at_200_vs_bentoml",
        "open loop 200 req/s: Lungwatch p99 ≤ BentoML's",
        LUNGWATCH,
        BENTOML,
        "p99_at_200_ms",
        1.0,
        at_least=False,
    ),
    Target(
        "one_at_a_time_vs_bentoml",
        "one request at a time: Lungwatch median ≤ 2× BentoML's",
        LUNGWATCH,
        BENTOML,
        "one_at_a_time_ms",
        2.0,
        at_least=False,
    ),
    Target(
        "one_at_a_time_vs_mlflow",
        "one request at a time: Lungwatch median ≤ 0.5× bare MLflow's",
        LUNGWATCH,
        MLFLOW,
        "one_at_a_time_ms",
        0.5,
        at_least=False,
    ),
    Target(
        "cpu_c8_vs_bentoml",
        "server CPU per request at 8 connections: Lungwatch ≤ 1.5× BentoML's",
        LUNGWATCH,
        BENTOML,
        "cpu_ms_c8",
        1.5,
        at_least=False,
    ),
    Target(
        "telemetry_overhead",
        "throughput (best closed loop), telemetry on / off ≥ 0.9",
        LUNGWATCH,
        TELEMETRY_OFF,
        "saturation_rps",
        0.9,
        at_least=True,
    ),
    Target(
        "rss_vs_bentoml",
        "RSS idle, all server processes: Lungwatch ≤ BentoML's + 100 MB",
        LUNGWATCH,
        BENTOML,
        "rss_idle_mb",
        100.0,
        at_least=False,
        difference=True,
        unit=" MB",
    ),
    Target(
        "cold_start_vs_bentoml",
        "cold start to first prediction: Lungwatch ≤ 2× BentoML's",
        LUNGWATCH,
        BENTOML,
        "cold_start_s",
        2.0,
        at_least=False,
    ),
    Target(
        "c8_vs_bentoml_sklearn",
        "closed loop, 8 connections: Lungwatch ≥ 2× BentoML serving scikit-learn",
        LUNGWATCH,
        BENTOML_SKLEARN,
        "throughput_c8",
        2.0,
        at_least=True,
    ),
    Target(
        "one_at_a_time_vs_bentoml_sklearn",
        "one request at a time: Lungwatch median ≤ 0.5× BentoML serving scikit-learn",
        LUNGWATCH,
        BENTOML_SKLEARN,
        "one_at_a_time_ms",
        0.5,
        at_least=False,
    ),
)

# Ratios worth reading that are not targets: what batching, telemetry and ONNX buy or cost.
EXTRA_RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("batching gain: best closed loop, Lungwatch / batching off", LUNGWATCH, "batching_off",
     "saturation_rps"),
    ("closed loop, 64 connections: Lungwatch / BentoML", LUNGWATCH, BENTOML, "throughput_c64"),
    ("closed loop, 8 connections: Lungwatch / bare MLflow", LUNGWATCH, MLFLOW, "throughput_c8"),
    ("server CPU per request at 50 req/s: Lungwatch / BentoML", LUNGWATCH, BENTOML,
     "cpu_ms_at_50"),
    ("server CPU per request at 8 connections: Lungwatch / bare MLflow", LUNGWATCH, MLFLOW,
     "cpu_ms_c8"),
    ("ONNX gain in BentoML: 8 connections, ONNX / scikit-learn", BENTOML, BENTOML_SKLEARN,
     "throughput_c8"),
    ("best closed loop, 10 % of traces sampled / telemetry off", SAMPLED, TELEMETRY_OFF,
     "saturation_rps"),
    ("best closed loop, 10 % of traces sampled / full telemetry", SAMPLED, LUNGWATCH,
     "saturation_rps"),
)  # fmt: skip


# Issue 23's targets: the shadow's cost against Lungwatch alone in the same round, and the
# hot swap's tail against the same run's tail outside the swaps.
ROLLOUT_TARGETS: tuple[Target, ...] = (
    Target(
        "shadow_c8",
        "shadow at 100 %: closed loop 8 connections, throughput shadow / alone ≥ 0.85",
        SHADOW,
        LUNGWATCH,
        "throughput_c8",
        0.85,
        at_least=True,
    ),
    Target(
        "shadow_p99_at_50",
        "shadow at 100 %: open loop 50 req/s, p99 shadow / alone ≤ 1.2",
        SHADOW,
        LUNGWATCH,
        "p99_at_50_ms",
        1.2,
        at_least=False,
    ),
)


# Issue 24's target: what the model-quality work costs per prediction, as full Lungwatch over
# the same with that work off, in the same round.
QUALITY_TARGETS: tuple[Target, ...] = (
    Target(
        "quality_c8",
        "model-quality monitoring: closed loop 8 connections, throughput on / off ≥ 0.95",
        LUNGWATCH,
        QUALITY_OFF,
        "throughput_c8",
        0.95,
        at_least=True,
    ),
)
QUALITY_RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("model-quality monitoring: closed loop 64 connections, throughput on / off", LUNGWATCH,
     QUALITY_OFF, "throughput_c64"),
    ("model-quality monitoring: open loop 50 req/s, p99 on / off", LUNGWATCH, QUALITY_OFF,
     "p99_at_50_ms"),
    ("model-quality monitoring: server CPU per request at 8 connections, on / off", LUNGWATCH,
     QUALITY_OFF, "cpu_ms_c8"),
)  # fmt: skip


@dataclass(frozen=True)
class WithinTarget:
    """A target on one system's own per-round figure (a ratio inside one of its runs)."""

    key: str
    text: str
    system: str
    figure: str
    bound: float
    at_least: bool
    unit: str = "×"


HOT_SWAP_TARGET = WithinTarget(
    "hot_swap_p99",
    "hot swap under 200 req/s: p99 of requests sent during the swaps / p99 outside them ≤ 2",
    HOT_SWAP,
    "swap_p99_ratio",
    2.0,
    at_least=False,
)

# Rollout figures worth reading that are not targets: the canary's cost, the shadow's beyond
# the two loads the targets name.
ROLLOUT_RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("canary at 50 %: closed loop 8 connections, throughput canary / alone", CANARY, LUNGWATCH,
     "throughput_c8"),
    ("canary at 50 %: open loop 50 req/s, p99 canary / alone", CANARY, LUNGWATCH,
     "p99_at_50_ms"),
    ("canary at 50 %: closed loop 64 connections, throughput canary / alone", CANARY, LUNGWATCH,
     "throughput_c64"),
    ("canary at 50 %: open loop 200 req/s, p99 canary / alone", CANARY, LUNGWATCH,
     "p99_at_200_ms"),
    ("canary at 50 %: server CPU per request at 8 connections, canary / alone", CANARY,
     LUNGWATCH, "cpu_ms_c8"),
    ("shadow at 100 %: closed loop 64 connections, throughput shadow / alone", SHADOW, LUNGWATCH,
     "throughput_c64"),
    ("shadow at 100 %: open loop 200 req/s, p99 shadow / alone", SHADOW, LUNGWATCH,
     "p99_at_200_ms"),
    ("shadow at 100 %: server CPU per request at 8 connections, shadow / alone", SHADOW,
     LUNGWATCH, "cpu_ms_c8"),
)  # fmt: skip


def swap_summary(
    records: Sequence[Sequence[Any]], moves: Sequence[Mapping[str, Any]], tail_s: float
) -> dict[str, Any]:
    """Requests inside and outside the swaps of one hot-swap run, and their latencies.

    `records`: [sent, latency_s, ok, version] per request (bench.load, monotonic clock);
    `moves`: the harness's alias moves ({"from", "to", "moved_at"} on the same clock). A
    swap's window runs from its move until `tail_s` after the first answer by the new
    version ends (to the end of the run when the new version never answers); a request is
    "during" when it was sent inside a window. Times in the result are seconds from the run's
    first send.
    """
    out: dict[str, Any] = {"tail_s": tail_s, "windows": []}
    if not records:
        return out
    origin = min(r[0] for r in records)
    last_sent = max(r[0] for r in records)
    spans: list[tuple[float, float]] = []
    for i, move in enumerate(moves):
        moved = float(move["moved_at"])
        following = float(moves[i + 1]["moved_at"]) if i + 1 < len(moves) else math.inf
        answers = [r[0] + r[1] for r in records if r[2] and r[3] == move["to"] and r[0] >= moved]
        first = min(answers, default=None)
        end = first + tail_s if first is not None else last_sent
        spans.append((moved, end))
        # An atomic swap answers every request sent after the new version's first answer
        # with the new version (one model-server worker; each of several swaps on its own).
        late_old = (
            sum(1 for r in records if r[2] and r[3] == move["from"] and first < r[0] < following)
            if first is not None
            else 0
        )
        seen = move.get("served_seen_at")
        out["windows"].append(
            {
                "from": move["from"],
                "to": move["to"],
                "moved_at_s": moved - origin,
                "answered": first is not None,
                "seconds_to_answer": None if first is None else first - moved,
                "window_s": [moved - origin, end - origin],
                "requests": sum(1 for r in records if moved <= r[0] <= end),
                "old_version_after_new": late_old,
                "served_seen_s": None if seen is None else float(seen) - moved,
            }
        )

    def inside(sent: float) -> bool:
        return any(start <= sent <= end for start, end in spans)

    during = [r for r in records if inside(r[0])]
    outside = [r for r in records if not inside(r[0])]
    expected = {m["from"] for m in moves} | {m["to"] for m in moves}
    versions: dict[str, int] = {}
    for r in records:
        if r[2]:
            versions[r[3]] = versions.get(r[3], 0) + 1
    out.update(
        requests_during=len(during),
        requests_outside=len(outside),
        errors_during=sum(1 for r in during if not r[2]),
        errors_outside=sum(1 for r in outside if not r[2]),
        versions=versions,
        unexpected_versions=sum(n for v, n in versions.items() if v not in expected),
    )
    for name, group in (("during", during), ("outside", outside)):
        ms = [1000 * r[1] for r in group if r[2]]
        out[f"p50_{name}_ms"] = percentile(ms, 50) if ms else None
        out[f"p99_{name}_ms"] = percentile(ms, 99) if ms else None
    p99_in, p99_out = out["p99_during_ms"], out["p99_outside_ms"]
    out["p99_ratio"] = p99_in / p99_out if p99_in is not None and p99_out else None
    out["timeline"] = swap_timeline(records, origin)
    return out


def swap_timeline(
    records: Sequence[Sequence[Any]], origin: float, bucket_s: float = 0.5
) -> list[list[float | None]]:
    """[start s, requests, failed, p99 ms] per `bucket_s` of send time: where in a swap the
    tail comes from (the JSON keeps this, not the ~7,000 requests of a run)."""
    buckets: dict[int, list[Sequence[Any]]] = {}
    for r in records:
        buckets.setdefault(int((r[0] - origin) // bucket_s), []).append(r)
    timeline: list[list[float | None]] = []
    for index in sorted(buckets):
        group = buckets[index]
        ms = [1000 * r[1] for r in group if r[2]]
        p99 = round(percentile(ms, 99), 2) if ms else None
        failed = sum(1 for r in group if not r[2])
        timeline.append([index * bucket_s, float(len(group)), float(failed), p99])
    return timeline


def _role(process_name: str) -> str | None:
    """Which Lungwatch process a name is, for the CPU split (other systems have one)."""
    if process_name.endswith("gateway"):
        return "gateway"
    if process_name.endswith("model-server"):
        return "model_server"
    return None


def figures(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The flat per-round figures of one system, the inputs of every table and target."""
    out: dict[str, float | None] = {}
    closed = result.get("closed", [])
    for run in closed:
        c = run["concurrency"]
        out[f"throughput_c{c}"] = run["throughput_rps"]
        out[f"cpu_ms_c{c}"] = run.get("cpu_ms_per_request")
        out[f"p50_c{c}_ms"] = (run.get("latency") or {}).get("p50_ms")
        out.update(_rollout_figures(result, run, f"c{c}"))
    if closed:
        best = max(closed, key=lambda r: r["throughput_rps"])
        out["saturation_rps"] = best["throughput_rps"]
        out["saturation_concurrency"] = best["concurrency"]
        out["cpu_ms_sat"] = best.get("cpu_ms_per_request")
        out["client_cpu_ms_sat"] = best.get("client_cpu_ms_per_request")
        lone = [r for r in closed if r["concurrency"] == 1]
        if lone and lone[0]["latency"]:
            out["one_at_a_time_ms"] = lone[0]["latency"]["p50_ms"]
            out["one_at_a_time_mean_ms"] = lone[0]["latency"]["mean_ms"]
        # the gateway's and the model server's shares of the CPU, one at a time and saturated
        for label, run in (("c1", lone[0] if lone else {}), ("sat", best)):
            for name, ms in (run.get("cpu_ms_per_request_by_process") or {}).items():
                role = _role(name)
                if role:
                    out[f"cpu_ms_{label}_{role}"] = ms
    opened = sorted(result.get("open", []), key=lambda r: r["rate"])
    max_kept = 0.0
    broken_at: float | None = None
    for run in opened:
        rate = _rate_key(run["rate"])
        latency = run.get("latency") or {}
        for q in ("p50", "p95", "p99"):
            out[f"{q}_at_{rate}_ms"] = latency.get(f"{q}_ms")
        out[f"achieved_at_{rate}"] = run["achieved_rps"]
        out[f"kept_at_{rate}"] = 1.0 if run.get("kept") else 0.0
        out[f"cpu_ms_at_{rate}"] = run.get("cpu_ms_per_request")
        out.update(_rollout_figures(result, run, f"at_{rate}"))
        if broken_at is None:
            if run.get("kept"):
                max_kept = float(run["rate"])
            else:
                broken_at = float(run["rate"])
    # A short set of rates (the rollout systems) is no ladder: its highest kept rate says
    # nothing about the rates it was never offered.
    if opened and result.get("loads", "all") == "all":
        out["max_kept_rate"] = max_kept
    # Rates above the one a system could not keep were never offered to it: not kept either.
    for rate in result.get("open_rates_planned", []):
        if broken_at is not None and rate > broken_at:
            out.setdefault(f"kept_at_{_rate_key(rate)}", 0.0)
    swap = result.get("hot_swap")
    if swap:
        out.update(_swap_figures(swap))
    loads = [
        r["foreign_load"]
        for r in [*closed, *result.get("open", []), *([swap] if swap else [])]
        if r.get("foreign_load") is not None
    ]
    # The busiest moment matters: one disturbed run is enough to distort a median of few.
    out["foreign_load_max"] = max(loads) if loads else None
    memory = result.get("memory_loaded") or {}
    if memory:
        out["rss_bytes"] = memory.get("rss_bytes")
        out["pss_bytes"] = memory.get("pss_bytes")
    idle = result.get("memory_idle") or {}
    if idle.get("rss_bytes") is not None:
        out["rss_idle_bytes"] = idle["rss_bytes"]
        out["rss_idle_mb"] = idle["rss_bytes"] / 1e6
    cold = result.get("cold_start_s", result.get("startup_s"))
    if cold is not None:
        out["cold_start_s"] = cold
    return out


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def _rollout_figures(
    result: Mapping[str, Any], run: Mapping[str, Any], label: str
) -> dict[str, float | None]:
    """Per run of a system with a challenger: the share answered by the challenger (from the
    versions the answers name), and what the gateway's shadow and canary counters say."""
    out: dict[str, float | None] = {}
    served = result.get("served_versions") or {}
    versions: Mapping[str, int] = run.get("versions") or {}
    answered = sum(versions.values())
    if served.get("challenger") and answered:
        out[f"challenger_share_{label}"] = versions.get(served["challenger"], 0) / answered
    counters: Mapping[str, float] = run.get("rollout") or {}
    if not counters:
        return out
    if "shadow_scored" in counters or "shadow_dropped" in counters:
        ok = run.get("ok") or 0
        scored = counters.get("shadow_scored", 0.0)
        out[f"shadow_scored_share_{label}"] = scored / ok if ok else None
        for outcome in ("dropped", "failed", "no_challenger"):
            out[f"shadow_{outcome}_{label}"] = counters.get(f"shadow_{outcome}", 0.0)
    out[f"canary_fallbacks_{label}"] = counters.get("canary_fallbacks", 0.0)
    return out


def _swap_figures(swap: Mapping[str, Any]) -> dict[str, float | None]:
    summary: Mapping[str, Any] = swap.get("swaps") or {}
    windows: Sequence[Mapping[str, Any]] = summary.get("windows") or []
    to_answer = [w["seconds_to_answer"] for w in windows if w["answered"]]
    return {
        "swap_p99_ratio": summary.get("p99_ratio"),
        "swap_p99_during_ms": summary.get("p99_during_ms"),
        "swap_p99_outside_ms": summary.get("p99_outside_ms"),
        "swap_p50_during_ms": summary.get("p50_during_ms"),
        "swap_p50_outside_ms": summary.get("p50_outside_ms"),
        "swap_seconds_to_answer_max": max(to_answer) if to_answer else None,
        "swap_moves": float(len(windows)),
        "swap_unanswered": float(sum(1 for w in windows if not w["answered"])),
        "swap_old_version_after_new": float(sum(w["old_version_after_new"] for w in windows)),
        "swap_requests_during": summary.get("requests_during"),
        "swap_requests_outside": summary.get("requests_outside"),
        "swap_errors": float(swap.get("errors", 0)),
        "swap_unexpected_versions": summary.get("unexpected_versions"),
        "swap_achieved_rps": swap.get("achieved_rps"),
        "swap_kept": 1.0 if swap.get("kept") else 0.0,
    }


def round_figures(rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, dict[str, float | None]]]:
    return [
        {system: figures(result) for system, result in round_["systems"].items()}
        for round_ in rounds
    ]


def evaluate(
    target: Target, per_round: Sequence[Mapping[str, Mapping[str, float | None]]]
) -> dict[str, Any]:
    """A target's verdict; a p99 at a rate also asks whether each system kept that rate.

    A system that could not keep the rate (or never got to it, having broken at a lower one)
    has no meaningful p99 there: it fails the target when the other system kept the rate, and
    meets it when only the other one failed.
    """
    result = evaluate_target(target, per_round)
    if not (target.figure.startswith("p99_at_") and target.figure.endswith("_ms")):
        return result
    kept_figure = "kept_at_" + target.figure.removeprefix("p99_at_").removesuffix("_ms")

    def kept(system: str) -> bool | None:
        s = spread(r.get(system, {}).get(kept_figure) for r in per_round)
        return None if s is None else s.median >= 0.5

    num, den = kept(target.numerator), kept(target.denominator)
    rate = kept_figure.removeprefix("kept_at_")
    if num is False and den is True:
        result.update(met=False, note=f"{target.numerator} did not keep {rate} req/s")
    elif num is True and den is False:
        result.update(met=True, note=f"{target.denominator} did not keep {rate} req/s")
    elif num is False and den is False:
        result["note"] = f"neither kept {rate} req/s"
    return result


def summarize(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians and spreads per system, the targets, and the extra ratios."""
    per_round = round_figures(rounds)
    systems: list[str] = []
    for r in per_round:
        systems.extend(s for s in r if s not in systems)
    summary: dict[str, dict[str, Any]] = {}
    for system in systems:
        names: list[str] = []
        for r in per_round:
            names.extend(n for n in r.get(system, {}) if n not in names)
        summary[system] = {}
        for name in names:
            s = spread(r.get(system, {}).get(name) for r in per_round)
            summary[system][name] = s.as_dict() if s else None
    targets = [evaluate(t, per_round) for t in TARGETS]
    rollout = [evaluate(t, per_round) for t in ROLLOUT_TARGETS]
    rollout.append(evaluate_hot_swap(HOT_SWAP_TARGET, per_round))
    return {
        "per_round": per_round,
        "systems": summary,
        "targets": targets,
        "ratios": _ratios(EXTRA_RATIOS, per_round),
        "rollout_targets": rollout,
        "rollout_ratios": _ratios(ROLLOUT_RATIOS, per_round),
        "quality_targets": [evaluate(t, per_round) for t in QUALITY_TARGETS],
        "quality_ratios": _ratios(QUALITY_RATIOS, per_round),
    }


def _ratios(
    table: Sequence[tuple[str, str, str, str]],
    per_round: Sequence[Mapping[str, Mapping[str, float | None]]],
) -> list[dict[str, Any]]:
    out = []
    for text, num, den, figure in table:
        values = per_round_ratios(
            [{k: v.get(figure) for k, v in r.items()} for r in per_round], num, den
        )
        s = spread(values)
        out.append({"text": text, "per_round": values, "value": s.as_dict() if s else None})
    return out


def evaluate_within(
    target: WithinTarget, per_round: Sequence[Mapping[str, Mapping[str, float | None]]]
) -> dict[str, Any]:
    """Met or not from the median over rounds of one system's own figure."""
    values = [r.get(target.system, {}).get(target.figure) for r in per_round]
    return verdict(target, values)


def evaluate_hot_swap(
    target: WithinTarget, per_round: Sequence[Mapping[str, Mapping[str, float | None]]]
) -> dict[str, Any]:
    """The tail ratio, failed outright when a moved alias was never answered by its version;
    failed requests and wrong versions are named beside it."""
    result = evaluate_within(target, per_round)
    figures = [r[target.system] for r in per_round if target.system in r]
    notes = []
    unanswered = sum(f.get("swap_unanswered") or 0 for f in figures)
    if unanswered:
        result["met"] = False
        notes.append(f"{unanswered:.0f} move(s) never answered by the new version")
    errors = sum(f.get("swap_errors") or 0 for f in figures)
    if errors:
        notes.append(f"{errors:.0f} failed request(s)")
    wrong = sum(f.get("swap_unexpected_versions") or 0 for f in figures)
    if wrong:
        notes.append(f"{wrong:.0f} answer(s) by a version never moved to")
    if notes:
        result["note"] = "; ".join(notes)
    return result


# --- markdown ------------------------------------------------------------------------------
def fmt_spread(value: Mapping[str, float] | None, digits: int = 1, scale: float = 1.0) -> str:
    """ "median (min–max)", or the median alone when there was one round."""
    if not value:
        return "—"
    med, lo, hi = (value[k] * scale for k in ("median", "min", "max"))
    if value["n"] <= 1 or lo == hi:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def fmt_target(target: Mapping[str, Any]) -> tuple[str, str]:
    value = target["value"]
    note = f" ({target['note']})" if target.get("note") else ""
    if target["met"] is None:
        return ("—" + note), "not measured"
    measured = ("—" if value is None else fmt_spread(value, 2) + target["unit"]) + note
    return measured, "**met**" if target["met"] else "**not met**"


def _get(summary: Mapping[str, Any], system: str, name: str) -> Mapping[str, float] | None:
    value: Mapping[str, float] | None = summary["systems"].get(system, {}).get(name)
    return value


def plot_name(stem: str) -> str:
    return f"{stem}-p99.png"


def markdown(data: Mapping[str, Any], plot: str | None = None) -> str:
    meta = data["meta"]
    summary = data["summary"]
    labels: dict[str, str] = meta["labels"]
    everything = [s for s in labels if s in summary["systems"]]
    # The per-system tables show the systems that ran closed- or open-loop loads (the hot
    # swap's one run has its own table).
    systems = [
        s
        for s in everything
        if any(
            v is not None and k.startswith(("throughput_c", "p99_at_"))
            for k, v in summary["systems"][s].items()
        )
    ]
    lines = [
        f"# Lungwatch benchmark ({'quick smoke run' if meta['quick'] else 'full run'})",
        "",
        f"- date: {meta['date']} · commit `{meta['commit']}` · command `{meta['command']}`",
        f"- machine: {meta['machine']}",
        f"- rounds: {meta['rounds']} (system order rotated each round) · closed-loop "
        f"{meta['closed_seconds']:g} s per concurrency · open-loop {meta['open_seconds']:g} s "
        f"per rate (Poisson arrivals, latency from the scheduled send) · model: "
        f"{meta['model']}",
    ]
    if meta.get("bentoml"):
        lines.append(
            f"- BentoML venv: {', '.join(meta['bentoml'])}; adaptive batching on (max batch "
            "32, one worker); ONNX on onnxruntime with one thread"
        )
    if meta.get("challenger"):
        lines.append(
            f"- second version (the challenger of (8) and (9), and the version (10)'s "
            f"@champion is moved to): {meta['challenger']}"
        )
    if meta.get("onnx_sha256"):
        lines.append(
            f"- every ONNX system serves the registered file (sha256 {meta['onnx_sha256']}…); "
            "every system's first answer matched the registered pipeline's (same class, "
            "probabilities within 1e-5)"
        )
    lines += [
        "- figures are medians over rounds, (min–max) in brackets; ratios are computed inside "
        "each round, then their median is taken",
        "- other load on the machine: busy CPU during a run not spent by the servers, the load "
        "client, the OTLP sink or the harness, as a share of all cores; above a few % the "
        "machine was shared and the figures of that system are disturbed",
        other_load_line(data.get("rounds", [])),
        code_line(data.get("rounds", [])),
        "",
        "## Targets (issue 11)",
        "",
        "| target | measured | result |",
        "|---|---|---|",
    ]
    for target in summary["targets"]:
        measured, verdict = fmt_target(target)
        lines.append(f"| {target['text']} | {measured} | {verdict} |")
    lines += ["", "| other ratio | measured |", "|---|---|"]
    for ratio in summary["ratios"]:
        lines.append(f"| {ratio['text']} | {fmt_spread(ratio['value'], 2)}× |")
    lines += rollout_markdown(data, everything)
    lines += quality_markdown(data, everything)

    lines += [
        "",
        "## Per system",
        "",
        "| system | 8 connections req/s | 64 connections req/s | one at a time p50 ms "
        "| p99 at 50 req/s ms | p99 at 200 req/s ms | highest rate kept req/s "
        "| server CPU ms/req at 8 connections | at 50 req/s | cold start s | RSS idle MB "
        "| RSS after load MB | other load on the machine, % (worst run) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    mb = 1 / 1e6
    for s in systems:

        def g(name: str, digits: int, scale: float = 1.0, s: str = s) -> str:
            return fmt_spread(_get(summary, s, name), digits, scale)

        lines.append(
            f"| {labels[s]} | {g('throughput_c8', 0)} | {g('throughput_c64', 0)} "
            f"| {g('one_at_a_time_ms', 2)} | {g('p99_at_50_ms', 1)} | {g('p99_at_200_ms', 1)} "
            f"| {g('max_kept_rate', 0)} | {g('cpu_ms_c8', 2)} | {g('cpu_ms_at_50', 2)} "
            f"| {g('cold_start_s', 2)} | {g('rss_idle_bytes', 0, mb)} | {g('rss_bytes', 0, mb)} "
            f"| {g('foreign_load_max', 0, 100)} |"
        )

    concurrencies = meta["concurrencies"]
    lines += [
        "",
        "## Closed loop: throughput (req/s) and server CPU (ms per request) by connections",
        "",
        "| system | " + " | ".join(f"c={c} req/s | c={c} CPU" for c in concurrencies) + " |",
        "|---|" + "---|---|" * len(concurrencies),
    ]
    for s in systems:
        cells = [
            f"{fmt_spread(_get(summary, s, f'throughput_c{c}'), 0)} | "
            f"{fmt_spread(_get(summary, s, f'cpu_ms_c{c}'), 2)}"
            for c in concurrencies
        ]
        lines.append(f"| {labels[s]} | " + " | ".join(cells) + " |")

    split_names = [f"cpu_ms_{x}_{r}" for x in ("c1", "sat") for r in ("gateway", "model_server")]
    split_systems = [s for s in systems if any(_get(summary, s, n) for n in split_names)]
    if split_systems:
        lines += [
            "",
            "## Where Lungwatch's server CPU goes (ms per request)",
            "",
            "| system | one at a time: gateway | model server | best closed loop: gateway "
            "| model server |",
            "|---|---|---|---|---|",
        ]
    for s in split_systems:
        cells = [fmt_spread(_get(summary, s, name), 2) for name in split_names]
        lines.append(f"| {labels[s]} | " + " | ".join(cells) + " |")

    rates = meta["rates"]
    lines += [
        "",
        "## Open loop: latency p50 / p95 / p99 (ms) at fixed offered rates",
        "",
        "A rate a system could not keep (under 95 % of it answered, or over 1 % errors) is "
        "marked † with the rate it achieved; higher rates were then not offered to it.",
        "",
    ]
    if plot:
        lines += [f"![p99 latency against offered load, every system]({plot})", ""]
    lines += [
        "| system | " + " | ".join(f"{_rate_key(r)} req/s" for r in rates) + " |",
        "|---|" + "---|" * len(rates),
    ]
    for s in systems:
        cells = []
        for r in rates:
            key = _rate_key(r)
            p50, p95, p99 = (_get(summary, s, f"{q}_at_{key}_ms") for q in ("p50", "p95", "p99"))
            if p50 is None or p95 is None or p99 is None:
                cells.append("not run")
                continue
            cell = f"{p50['median']:.1f} / {p95['median']:.1f} / {p99['median']:.1f}"
            kept = _get(summary, s, f"kept_at_{key}")
            if kept is not None and kept["min"] < 1:
                achieved = _get(summary, s, f"achieved_at_{key}")
                cell += f" † {achieved['median']:.0f} req/s" if achieved else " †"
            cells.append(cell)
        lines.append(f"| {labels[s]} | " + " | ".join(cells) + " |")
    lines += ["", "Raw per-round figures: the JSON file next to this one.", ""]
    return "\n".join(lines)


def quality_markdown(data: Mapping[str, Any], systems: Sequence[str]) -> list[str]:
    """Issue 24's section: the cost of the per-row model-quality work."""
    summary = data["summary"]
    if QUALITY_OFF not in systems:
        return []
    return section_lines(
        "## Model quality (issue 24): what the per-row estimate and data-quality counting cost",
        "(4) Lungwatch against (11), the same with LUNGWATCH_GATEWAY_QUALITY_MONITORING=false, "
        "in the same round.",
        summary.get("quality_targets", []),
        summary.get("quality_ratios", []),
    )


def section_lines(
    title: str,
    intro: str,
    targets: Sequence[Mapping[str, Any]],
    ratios: Sequence[Mapping[str, Any]],
) -> list[str]:
    """A section's heading, its targets' verdicts and its other ratios, as markdown tables."""
    lines = ["", title, "", intro, "", "| target | measured | result |", "|---|---|---|"]
    for target in targets:
        measured, verdict = fmt_target(target)
        lines.append(f"| {target['text']} | {measured} | {verdict} |")
    lines += ["", "| other ratio (no target) | measured |", "|---|---|"]
    for ratio in ratios:
        lines.append(f"| {ratio['text']} | {fmt_spread(ratio['value'], 2)}× |")
    return lines


def rollout_markdown(data: Mapping[str, Any], systems: Sequence[str]) -> list[str]:
    """Issue 23's section: its targets, the canary's and shadow's ratios to Lungwatch alone,
    what the gateway did with the challenger's share, and the hot swap round by round."""
    summary = data["summary"]
    labels: dict[str, str] = data["meta"]["labels"]
    rollout = [s for s in systems if s in (SHADOW, CANARY, HOT_SWAP)]
    if not rollout and not summary.get("rollout_targets"):
        return []
    lines = section_lines(
        "## Rollout (issue 23): challenger in shadow and canary, hot swap",
        "Against (4) Lungwatch alone in the same round; the hot swap against the same run's "
        "requests outside the swaps.",
        summary.get("rollout_targets", []),
        summary.get("rollout_ratios", []),
    )

    with_challenger = [s for s in rollout if s != HOT_SWAP]
    if with_challenger:
        lines += [
            "",
            "What the gateway did with the challenger's share (answers counted by the "
            "`model_version` they name; shadow rows and canary fallbacks from the gateway's "
            "own counters, read before and after each run):",
            "",
            "| system | answered by the challenger, 8 connections | at 50 req/s "
            "| shadow rows scored per answered request, 8 connections | at 50 req/s "
            "| shadow rows dropped / failed / no challenger, 8 connections "
            "| canary fallbacks, 8 connections |",
            "|---|---|---|---|---|---|---|",
        ]
    for s in with_challenger:

        def g(name: str, digits: int, scale: float = 1.0, s: str = s) -> str:
            return fmt_spread(_get(summary, s, name), digits, scale)

        lines.append(
            f"| {labels[s]} | {g('challenger_share_c8', 0, 100)} % "
            f"| {g('challenger_share_at_50', 0, 100)} % | {g('shadow_scored_share_c8', 2)} "
            f"| {g('shadow_scored_share_at_50', 2)} "
            f"| {g('shadow_dropped_c8', 0)} / {g('shadow_failed_c8', 0)} "
            f"/ {g('shadow_no_challenger_c8', 0)} "
            f"| {g('canary_fallbacks_c8', 0)} |"
        )

    swaps = [
        (i + 1, round_["systems"][HOT_SWAP]["hot_swap"])
        for i, round_ in enumerate(data.get("rounds", []))
        if round_["systems"].get(HOT_SWAP, {}).get("hot_swap")
    ]
    if swaps:
        lines += [
            "",
            f"### Hot swap: {labels.get(HOT_SWAP, HOT_SWAP)}",
            "",
            "One open-loop run per round; @champion moved to the second version once the run "
            "was steady and back once that version served. A request is *during* a swap when "
            "it was sent between the alias move and "
            f"{swaps[0][1]['swaps'].get('tail_s', 1):g} s after the new version's first "
            "answer.",
            "",
            "| round | alias move → first answer by the new version, s | requests during / "
            "outside | p50 during / outside, ms | p99 during / outside, ms | p99 ratio "
            "| failed requests | old-version answers after the new one answered |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for round_number, run in swaps:
        sw = run["swaps"]
        moved = ", ".join(
            f"v{w['from']}→v{w['to']} {w['seconds_to_answer']:.1f}"
            if w["answered"]
            else f"v{w['from']}→v{w['to']} never"
            for w in sw["windows"]
        )

        def ms(name: str, sw: Mapping[str, Any] = sw) -> str:
            value = sw.get(name)
            return "—" if value is None else f"{value:.1f}"

        ratio = sw.get("p99_ratio")
        late = sum(w["old_version_after_new"] for w in sw["windows"])
        lines.append(
            f"| {round_number} | {moved} | {sw.get('requests_during', 0)} / "
            f"{sw.get('requests_outside', 0)} | {ms('p50_during_ms')} / {ms('p50_outside_ms')} "
            f"| {ms('p99_during_ms')} / {ms('p99_outside_ms')} "
            f"| {'—' if ratio is None else f'{ratio:.2f}×'} | {run.get('errors', 0)} | {late} |"
        )
    return lines


def p99_curves(data: Mapping[str, Any]) -> dict[str, list[tuple[float, float, bool]]]:
    """Per system: (offered rate, median p99 ms, kept in most rounds) up to the first rate it
    did not keep in most rounds (a higher rate's median would rest on the few rounds that got
    there)."""
    summary = data["summary"]
    curves: dict[str, list[tuple[float, float, bool]]] = {}
    for system in data["meta"]["labels"]:
        points = []
        for rate in data["meta"]["rates"]:
            key = _rate_key(rate)
            p99 = _get(summary, system, f"p99_at_{key}_ms")
            if p99 is None:
                continue
            kept = _get(summary, system, f"kept_at_{key}")
            points.append((float(rate), p99["median"], bool(kept and kept["median"] >= 0.5)))
            if not points[-1][2]:
                break
        if points:
            curves[system] = points
    return curves


def plot_p99(data: Mapping[str, Any], path: Path) -> bool:
    """p99 latency against offered load, one line per system (PNG); False when nothing ran."""
    curves = p99_curves(data)
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display; the harness runs headless
    import matplotlib.pyplot as plt

    labels: dict[str, str] = data["meta"]["labels"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for system, points in curves.items():
        rates = [p[0] for p in points]
        p99s = [p[1] for p in points]
        (line,) = ax.plot(rates, p99s, marker="o", label=labels[system])
        lost = [p for p in points if not p[2]]
        if lost:
            ax.scatter([p[0] for p in lost], [p[1] for p in lost], marker="x", s=90,
                       color=line.get_color(), zorder=3)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    rates = sorted({p[0] for points in curves.values() for p in points})
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_xlabel("offered load, req/s (Poisson arrivals)")
    ax.set_ylabel("p99 latency, ms (from scheduled send)")
    meta = data["meta"]
    ax.set_title(f"p99 latency against offered load, {meta['date']}\n"
                 f"median of {meta['rounds']} round(s); × marks a rate not kept",
                 fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def code_line(rounds: Sequence[Mapping[str, Any]]) -> str:
    """Which code was measured; a warning when it changed while the benchmark ran."""
    digests: list[str] = []
    for round_ in rounds:
        for result in round_["systems"].values():
            digest = result.get("code_digest")
            if digest and digest not in digests:
                digests.append(digest)
    if len(digests) > 1:
        return (
            f"- **warning: the code changed while the benchmark ran** ({len(digests)} versions of "
            f"api/, model/, telemetry/: {', '.join(digests)}); rerun on a quiet tree"
        )
    return f"- code digest (api/, model/, telemetry/): {digests[0] if digests else 'not recorded'}"


def other_load_line(rounds: Sequence[Mapping[str, Any]]) -> str:
    """One line on how shared the machine was over the whole benchmark."""
    loads = [
        run["foreign_load"]
        for round_ in rounds
        for result in round_["systems"].values()
        for run in [*result.get("closed", []), *result.get("open", []),
                    *([result["hot_swap"]] if result.get("hot_swap") else [])]
        if run.get("foreign_load") is not None
    ]  # fmt: skip
    if not loads:
        return "- other load on the machine: not measured"
    s = spread(loads)
    assert s is not None
    quiet = sum(1 for v in loads if v < 0.05)
    return (
        f"- other load on the machine over all {len(loads)} runs: median {100 * s.median:.0f} %, "
        f"worst {100 * s.max:.0f} %; {quiet} runs under 5 %"
    )


def write(data: Mapping[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{stem}.json"
    md_path = out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    plot = plot_name(stem)
    md_path.write_text(markdown(data, plot if plot_p99(data, out_dir / plot) else None))
    return md_path, json_path


def _json_default(value: Any) -> Any:
    if isinstance(value, Spread):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
