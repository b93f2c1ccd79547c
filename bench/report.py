"""From per-round measurements to figures, within-round ratios, targets, markdown and JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devtools.stats import Spread, Target, evaluate_target, per_round_ratios, spread

# Issue 7's targets. System keys are bench.systems.SYSTEMS' keys.
TARGETS: tuple[Target, ...] = (
    Target(
        "saturation_vs_mlflow",
        "saturation throughput (2) ≥ 4× (1)",
        "lungwatch",
        "mlflow",
        "saturation_rps",
        4.0,
        at_least=True,
    ),
    Target(
        "p99_at_50_vs_mlflow",
        "p99 at 50 req/s (2) ≤ 0.7× (1)",
        "lungwatch",
        "mlflow",
        "p99_at_50_ms",
        0.7,
        at_least=False,
    ),
    Target(
        "one_at_a_time_vs_mlflow",
        "one request at a time (2) ≤ (1) + 2 ms",
        "lungwatch",
        "mlflow",
        "one_at_a_time_ms",
        2.0,
        at_least=False,
        difference=True,
        unit=" ms",
    ),
    Target(
        "telemetry_overhead",
        "throughput telemetry on (2) / off (3) ≥ 0.9",
        "lungwatch",
        "telemetry_off",
        "saturation_rps",
        0.9,
        at_least=True,
    ),
    Target(
        "rss_vs_mlflow",
        "RSS (2) ≤ 1.2× (1)",
        "lungwatch",
        "mlflow",
        "rss_bytes",
        1.2,
        at_least=False,
    ),
)

# Ratios worth reading that are not targets: what batching and telemetry each buy or cost.
EXTRA_RATIOS: tuple[tuple[str, str, str, str], ...] = (
    ("batching gain: saturation (2) / (4)", "lungwatch", "batching_off", "saturation_rps"),
    ("CPU per request at saturation (2) / (1)", "lungwatch", "mlflow", "cpu_ms_sat"),
    ("CPU per request at 50 req/s (2) / (1)", "lungwatch", "mlflow", "cpu_ms_at_50"),
    ("saturation (4) / (1)", "batching_off", "mlflow", "saturation_rps"),
)


def figures(result: Mapping[str, Any]) -> dict[str, float | None]:
    """The flat per-round figures of one system, the inputs of every table and target."""
    out: dict[str, float | None] = {}
    closed = result.get("closed", [])
    for run in closed:
        out[f"throughput_c{run['concurrency']}"] = run["throughput_rps"]
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
                role = "gateway" if name.endswith("gateway") else "model_server"
                out[f"cpu_ms_{label}_{role}"] = ms
    for run in result.get("open", []):
        rate = _rate_key(run["rate"])
        latency = run.get("latency") or {}
        for q in ("p50", "p95", "p99"):
            out[f"{q}_at_{rate}_ms"] = latency.get(f"{q}_ms")
        out[f"achieved_at_{rate}"] = run["achieved_rps"]
        out[f"kept_at_{rate}"] = 1.0 if run.get("kept") else 0.0
        out[f"cpu_ms_at_{rate}"] = run.get("cpu_ms_per_request")
    loads = [
        r["foreign_load"]
        for r in [*closed, *result.get("open", [])]
        if r.get("foreign_load") is not None
    ]
    # The busiest moment matters: one disturbed run is enough to distort a median of few.
    out["foreign_load_max"] = max(loads) if loads else None
    memory = result.get("memory_loaded") or {}
    if memory:
        out["rss_bytes"] = memory.get("rss_bytes")
        out["pss_bytes"] = memory.get("pss_bytes")
    idle = result.get("memory_idle") or {}
    if idle:
        out["rss_idle_bytes"] = idle.get("rss_bytes")
    return out


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def round_figures(rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, dict[str, float | None]]]:
    return [
        {system: figures(result) for system, result in round_["systems"].items()}
        for round_ in rounds
    ]


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
    targets = [evaluate_target(t, per_round) for t in TARGETS]
    extras = []
    for text, num, den, figure in EXTRA_RATIOS:
        values = per_round_ratios(
            [{k: v.get(figure) for k, v in r.items()} for r in per_round], num, den
        )
        s = spread(values)
        extras.append({"text": text, "per_round": values, "value": s.as_dict() if s else None})
    return {"per_round": per_round, "systems": summary, "targets": targets, "ratios": extras}


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
    if value is None:
        return "—", "not measured"
    unit = target["unit"]
    digits = 2
    measured = fmt_spread(value, digits) + unit
    return measured, "**met**" if target["met"] else "**not met**"


def _get(summary: Mapping[str, Any], system: str, name: str) -> Mapping[str, float] | None:
    value: Mapping[str, float] | None = summary["systems"].get(system, {}).get(name)
    return value


def markdown(data: Mapping[str, Any]) -> str:
    meta = data["meta"]
    summary = data["summary"]
    labels: dict[str, str] = meta["labels"]
    systems = [s for s in labels if s in summary["systems"]]
    lines = [
        f"# Lungwatch benchmark ({'quick smoke run' if meta['quick'] else 'full run'})",
        "",
        f"- date: {meta['date']} · commit `{meta['commit']}` · command `{meta['command']}`",
        f"- machine: {meta['machine']}",
        f"- rounds: {meta['rounds']} (system order rotated each round) · closed-loop "
        f"{meta['closed_seconds']:g} s per concurrency · open-loop {meta['open_seconds']:g} s "
        f"per rate (Poisson arrivals, latency from the scheduled send) · model: "
        f"{meta['model']}",
        "- figures are medians over rounds, (min–max) in brackets; ratios are computed inside "
        "each round, then their median is taken",
        "- other load on the machine: busy CPU during a run not spent by the servers, the load "
        "client, the OTLP sink or the harness, as a share of all cores; above a few % the "
        "machine was shared and the figures of that system are disturbed",
        other_load_line(data.get("rounds", [])),
        code_line(data.get("rounds", [])),
        "",
        "## Targets (issue 7)",
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

    lines += [
        "",
        "## Per system",
        "",
        "| system | saturation req/s | at concurrency | one at a time p50 ms | p99 at 50 req/s ms "
        "| server CPU ms/req at saturation | at 50 req/s | RSS MB after load | PSS MB "
        "| other load on the machine, % (worst run) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    mb = 1 / 1e6
    for s in systems:

        def g(name: str, digits: int, scale: float = 1.0, s: str = s) -> str:
            return fmt_spread(_get(summary, s, name), digits, scale)

        lines.append(
            f"| {labels[s]} | {g('saturation_rps', 0)} | {g('saturation_concurrency', 0)} "
            f"| {g('one_at_a_time_ms', 2)} | {g('p99_at_50_ms', 1)} | {g('cpu_ms_sat', 2)} "
            f"| {g('cpu_ms_at_50', 2)} | {g('rss_bytes', 0, mb)} | {g('pss_bytes', 0, mb)} "
            f"| {g('foreign_load_max', 0, 100)} |"
        )

    concurrencies = meta["concurrencies"]
    lines += [
        "",
        "## Closed loop: throughput (req/s) by concurrency",
        "",
        "| system | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|" + "---|" * len(concurrencies),
    ]
    for s in systems:
        cells = [fmt_spread(_get(summary, s, f"throughput_c{c}"), 0) for c in concurrencies]
        lines.append(f"| {labels[s]} | " + " | ".join(cells) + " |")

    split_names = [f"cpu_ms_{x}_{r}" for x in ("c1", "sat") for r in ("gateway", "model_server")]
    has_split = any(_get(summary, s, n) for s in systems for n in split_names)
    lines += (
        []
        if not has_split
        else [
            "",
            "## Where the server CPU goes (ms per request)",
            "",
            "| system | one at a time: gateway | model server | at saturation: gateway "
            "| model server |",
            "|---|---|---|---|---|",
        ]
    )
    for s in systems if has_split else []:
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
        for run in [*result.get("closed", []), *result.get("open", [])]
        if run.get("foreign_load") is not None
    ]
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
    md_path.write_text(markdown(data))
    return md_path, json_path


def _json_default(value: Any) -> Any:
    if isinstance(value, Spread):
        return value.as_dict()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")
