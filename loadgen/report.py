"""The final report: one dict (what `--json` writes) and its text rendering."""

from __future__ import annotations

from collections import Counter
from typing import Any

from loadgen.stats import (
    CONNECTION,
    OTHER,
    TIMEOUT,
    Recorder,
    summarize_histogram,
    version_order,
)


def build_report(
    recorder: Recorder, *, url: str, mode: str, profile: str, elapsed: float, closed_loop: bool
) -> dict[str, Any]:
    errors = recorder.errors
    accuracy = recorder.accuracy()
    if recorder.last_finished is not None:
        # From the first due send to the last answer: no start-up, no Prometheus waits.
        elapsed = recorder.last_finished - recorder.start
    return {
        "url": url,
        "mode": mode,
        "profile": profile,
        "elapsed_seconds": elapsed,
        "sent": recorder.sent,
        "dropped": recorder.dropped,
        "late": recorder.late,
        "follow_ups": recorder.follow_ups,  # sent after another was answered, off the schedule
        "unfinished": recorder.in_flight,
        "responses": recorder.responses,
        "status_classes": recorder.status_classes(),
        "status_codes": {str(k): v for k, v in sorted(recorder.status.items())},
        "timeouts": errors[TIMEOUT],
        "connection_errors": errors[CONNECTION],
        "other_errors": errors[OTHER],
        "unexpected": recorder.unexpected,
        "error_rate": recorder.error_rate(),
        "target_rate": None if closed_loop else recorder.target_rate(),
        "achieved_rate": recorder.send_rate(),
        "throughput": recorder.responses / elapsed if elapsed > 0 else None,
        "latency_seconds": summarize_histogram(recorder.latency),
        "valid_latency_seconds": summarize_histogram(recorder.valid_latency),
        "send_lag_seconds": summarize_histogram(recorder.send_lag),
        "accuracy": {
            "labelled_rows": recorder.labelled,
            "correct": recorder.correct,
            "accuracy": accuracy,
        },
        "kinds": {kind: dict(sorted(c.items())) for kind, c in sorted(recorder.kinds.items())},
        # 200 answers (requests; a batch is one) and the rows they carried, by model_version
        "by_model_version": _by_version(recorder.by_model_version),
        "rows_by_model_version": _by_version(recorder.rows_by_model_version),
    }


def _by_version(counts: dict[str, int]) -> dict[str, int]:
    return {version: counts[version] for version in version_order(counts)}


def sticky_summary(recorder: Recorder, header: str, keys: int) -> dict[str, Any]:
    """How the `--sticky-keys` keys were answered: a key answered by two versions is `split`
    (expected only when a version changed during the run)."""
    versions = recorder.versions_by_sticky_key
    keys_by_version = Counter(v for seen in versions.values() for v in seen)
    return {
        "header": header,
        "keys": keys,
        "keys_answered": len(versions),
        "keys_split": sum(len(v) > 1 for v in versions.values()),
        "keys_by_model_version": _by_version(keys_by_version),
    }


def _ms(seconds: float | int) -> str:
    return f"{float(seconds) * 1000:.1f}ms"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}/s"


def render(report: dict[str, Any]) -> str:
    lat = report["latency_seconds"]
    lag = report["send_lag_seconds"]
    classes = report["status_classes"]
    acc = report["accuracy"]
    closed = report["mode"] == "closed-loop"
    # A closed loop schedules each send when the previous answer arrives: service time only.
    origin = "from the actual send: closed loop" if closed else "from the scheduled send time"
    lines = [
        f"loadgen {report['mode']} run against {report['url']}: {report['profile']}",
        f"  sent        {report['sent']} in {report['elapsed_seconds']:.2f}s"
        f" (dropped {report['dropped']}, late {report['late']}, unfinished {report['unfinished']}"
        + (
            f", {report['follow_ups']} repeats sent after their first"
            if report.get("follow_ups")
            else ""
        )
        + ")",
        f"  answers     2xx {classes['2xx']}  4xx {classes['4xx']}  5xx {classes['5xx']}"
        f"  codes {report['status_codes']}",
        f"  no answer   timeouts {report['timeouts']}  connection errors "
        f"{report['connection_errors']}  other {report['other_errors']}",
        f"  rate        target {_rate(report['target_rate'])}  achieved "
        f"{_rate(report['achieved_rate'])}  throughput {_rate(report['throughput'])}",
        "  latency     "
        + "  ".join(f"{k} {_ms(lat[k])}" for k in ("p50", "p90", "p95", "p99", "p99.9", "max"))
        + f"  (n={lat['count']}, {origin})",
    ]
    if not closed:
        lines.append(
            f"  send lag    p50 {_ms(lag['p50'])}  p99 {_ms(lag['p99'])}  max {_ms(lag['max'])}"
            "  (how far the generator itself ran behind schedule)"
        )
    lines += [
        f"  unexpected  {report['unexpected']} (error rate {report['error_rate']:.2%}:"
        " valid not answered 200, invalid not answered 422, dropped)",
    ]
    if acc["accuracy"] is None:
        lines.append("  accuracy    n/a (no labelled row answered)")
    else:
        lines.append(
            f"  accuracy    {acc['accuracy']:.2%} ({acc['correct']}/{acc['labelled_rows']}"
            " labelled rows answered)"
        )
    answers = report["by_model_version"]
    rows = report["rows_by_model_version"]
    if answers:
        lines.append(
            "  by version  "
            + "  ".join(f"{v}: {n} answers, {rows.get(v, 0)} rows" for v, n in answers.items())
            + "  (answered 200, by the answer's model_version)"
        )
    else:
        lines.append("  by version  n/a (no answer 200)")
    sticky = report.get("sticky")
    if sticky is not None:
        lines.append(
            f"  sticky      {sticky['keys']} keys in {sticky['header']}:"
            f" {sticky['keys_answered']} answered, {sticky['keys_split']} by more than one"
            f" version; keys per version {sticky['keys_by_model_version']}"
        )
    drift = report.get("drift")
    if drift is not None:
        lines.append(
            f"  drift       {drift['profile']} on {drift['share']:.0%} of rows:"
            f" {drift['shifted_rows_sent']} shifted rows sent,"
            f" {drift['shifted_rows_answered']} predicted ({drift['shifts']})"
            + ("; shifted rows keep their level" if drift.get("labels") == "kept" else "")
        )
    feedback = report.get("feedback")
    if feedback is not None:
        accuracy = feedback["accuracy_of_accepted"]
        lines.append(
            f"  feedback    sent {feedback['sent']}  accepted {feedback['accepted']}"
            f"  rejected {feedback['rejected']} {feedback['rejected_by_reason']}"
            f"  no answer {sum(feedback['no_answer'].values())}"
            f"  accuracy of accepted "
            + ("n/a" if accuracy is None else f"{accuracy:.2%}")
            + " (not prediction requests: not in the figures above)"
        )
        for i, (version, tally) in enumerate(feedback["by_model_version"].items()):
            heading = "    by version " if i == 0 else " " * 15
            lines.append(
                f"{heading}{version}: {tally['correct']}/{tally['accepted']} accepted correct"
                f" ({tally['sent']} sent)"
            )
    quality = report.get("quality")
    if quality is not None:
        lines.extend(_quality_lines(quality))
    width = max([15, *map(len, report["kinds"])])
    for i, (kind, counts) in enumerate(report["kinds"].items()):
        outcomes = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "sent")
        heading = "  by kind     " if i == 0 else " " * 14
        lines.append(f"{heading}{kind:<{width}} sent {counts.get('sent', 0):>6}  {outcomes}")
    prom = report.get("prometheus")
    if prom is not None:
        if "error" in prom:
            lines.append(f"  prometheus  FAILED: {prom['error']}")
        else:
            verdict = "reconciled" if prom["ok"] else "MISMATCH"
            lines.append(f"  prometheus  {verdict}: observed {prom['observed']}")
            lines.extend(f"    {p}" for p in prom["problems"])
    for check in report.get("slo", []):
        verdict = "met" if check["ok"] else "MISSED"
        lines.append(f"  slo         {check['name']} {verdict}: {check['detail']}")
    return "\n".join(lines)


def _quality_lines(quality: dict[str, Any]) -> list[str]:
    """The `--quality` tally: what model_input_quality_total{feature, kind} must have counted."""
    injected = ", ".join(f"{kind} {n}" for kind, n in quality["injected"].items())
    ref = quality["reference"]
    lines = [
        f"  quality     injected {injected} (requests; a repeated row is two);"
        f" against {ref['rows']} rows, {ref['profiles']} profiles"
    ]
    extra = quality["uncertain"]
    rows = [
        (feature, kind, n, extra.get(feature, {}).get(kind, 0))
        for feature, kinds in quality["expected"].items()
        for kind, n in kinds.items()
    ]
    rows += [
        (feature, kind, 0, n)
        for feature, kinds in extra.items()
        for kind, n in kinds.items()
        if kind not in quality["expected"].get(feature, {})
    ]
    for i, (feature, kind, n, more) in enumerate(sorted(rows, key=lambda r: (r[1], r[0]))):
        heading = "    expected  " if i == 0 else " " * 14
        lines.append(f"{heading}{kind:<24} {feature:<26} {n}" + (f" .. {n + more}" if more else ""))
    if not rows:
        lines.append("    expected  nothing counted")
    lines.append(
        "    exact     "
        + (
            "yes (no row shared a key, no answer was lost)"
            if quality["exact"]
            else "no: a range where rows shared a key (sticky or API key) or answers were lost"
        )
    )
    return lines
