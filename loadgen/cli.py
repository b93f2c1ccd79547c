"""Command line: parse options, run, report, reconcile with Prometheus, judge the SLOs."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen import profiles
from loadgen.drift import DEFAULT_PROFILE, PROFILES, DriftingRowSource
from loadgen.feedback import FeedbackHook
from loadgen.payloads import (
    INVALID_KINDS,
    STICKY_HEADER,
    Mix,
    PayloadFactory,
    RowSource,
    StickyKeys,
    load_rows,
)
from loadgen.prometheus import PrometheusError, PrometheusProbe, reconcile
from loadgen.quality import QUALITY_KINDS, QualityTally, Reference, flat
from loadgen.record import RequestLog
from loadgen.report import build_report, render, sticky_summary
from loadgen.runner import RunPlan, run
from loadgen.stats import Recorder

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # an SLO was missed or Prometheus disagrees
EXIT_USAGE = 2  # argparse's own code for bad options
EXIT_UNREACHABLE = 3  # no request got an HTTP answer, or Prometheus could not be read
EXIT_INTERRUPTED = 130  # Ctrl-C: the report covers what was done, no check is trusted

# RFC 9110 token: what an HTTP header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_STICKY_KEYS = 1_000_000
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """`60s`, `2m`, `500ms`, `1h` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 2m, 500ms)")
    seconds = float(match.group(1)) * _UNIT[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("a duration must be positive")
    return seconds


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return convert


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a share: {text!r}") from exc
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share is between 0 and 1: {text!r}")
    return value


def _sticky_keys(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number of keys: {text!r}") from exc
    if not 0 <= value <= MAX_STICKY_KEYS:
        raise argparse.ArgumentTypeError(f"between 0 and {MAX_STICKY_KEYS}: {text!r}")
    return value


def _header_name(text: str) -> str:
    if not _HEADER_NAME.match(text):
        raise argparse.ArgumentTypeError(f"not an HTTP header name: {text!r}")
    return text.lower()


def parse_ramp(text: str) -> tuple[float, float]:
    """`FROM:TO` requests per second."""
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"a ramp is FROM:TO, e.g. 5:50, not {text!r}") from exc
    if start < 0 or end < 0 or start == end == 0:
        raise argparse.ArgumentTypeError("ramp rates must be >= 0 and not both 0")
    return start, end


def parse_steps(text: str) -> list[tuple[float, float]]:
    """`RATE:DURATION,...`, e.g. `10:20s,30:20s,50:20s`."""
    pairs = []
    for part in text.split(","):
        rate, sep, duration = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"a step is RATE:DURATION, e.g. 10:20s, not {part!r}")
        try:
            value = float(rate)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a rate: {rate!r}") from exc
        if value < 0:
            raise argparse.ArgumentTypeError(f"a rate must be >= 0: {rate!r}")
        pairs.append((value, parse_duration(duration)))
    return pairs


def _kind_shares(text: str, kinds: Sequence[str], what: str) -> dict[str, float]:
    """A total share spread over every kind (`0.2`), or `kind=share,...`."""
    if "=" not in text:
        total = _share(text)
        return {kind: total / len(kinds) for kind in kinds}
    shares = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in kinds:
            raise argparse.ArgumentTypeError(
                f"unknown {what} kind {kind!r}; known: {', '.join(kinds)}"
            )
        shares[kind] = _share(value)
    if sum(shares.values()) > 1:
        raise argparse.ArgumentTypeError(f"{what} shares add up to more than 1")
    return shares


def parse_invalid(text: str) -> dict[str, float]:
    """A total share spread over every invalid kind (`0.2`), or `kind=share,...`."""
    return _kind_shares(text, INVALID_KINDS, "invalid")


def parse_quality(text: str) -> dict[str, float]:
    """A total share spread over every data-quality kind, or `kind=share,...`."""
    return _kind_shares(text, QUALITY_KINDS, "quality")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadgen",
        description="Send prediction traffic to the Lungwatch gateway at a known rate, report "
        "latency (measured from the scheduled send time) and errors, and check the "
        "gateway's counters in Prometheus against what was sent.",
    )
    p.add_argument(
        "--url",
        default=os.environ.get("LUNGWATCH_LOADGEN_URL", DEFAULT_URL),
        help="gateway base URL (default: $LUNGWATCH_LOADGEN_URL or %(default)s)",
    )

    load = p.add_argument_group("load shape (one of; default --rate 10 --duration 10s)")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument(
        "--rate", type=_positive(float), metavar="R", help="open loop: R requests/s, constant"
    )
    shape.add_argument(
        "--ramp", type=parse_ramp, metavar="FROM:TO", help="open loop: linear ramp over --duration"
    )
    shape.add_argument(
        "--steps", type=parse_steps, metavar="R:DUR,...", help="open loop: rate R for DUR, ..."
    )
    shape.add_argument(
        "--concurrency",
        type=_positive(int),
        metavar="N",
        help="closed loop: N users, each waiting for its answer (finds maximum throughput)",
    )
    load.add_argument("--duration", type=parse_duration, metavar="DUR", help="e.g. 60s, 2m, 500ms")
    load.add_argument("--requests", type=_positive(int), metavar="N", help="stop after N requests")
    load.add_argument(
        "--max-in-flight",
        type=_positive(int),
        default=256,
        metavar="N",
        help="open loop: cap on unanswered requests (default %(default)s)",
    )
    load.add_argument(
        "--on-full",
        choices=("wait", "drop"),
        default="wait",
        help="when the cap is full: send late (latency still counts from the schedule) or "
        "drop and count it (default %(default)s)",
    )
    load.add_argument(
        "--timeout", type=parse_duration, default=10.0, metavar="DUR", help="per request (10s)"
    )

    mix = p.add_argument_group("requests")
    mix.add_argument(
        "--invalid",
        type=parse_invalid,
        default={},
        metavar="SHARE|KIND=SHARE,...",
        help=f"share of invalid requests; kinds: {', '.join(INVALID_KINDS)} (default 0)",
    )
    mix.add_argument(
        "--batch-share",
        type=_share,
        default=0.0,
        metavar="SHARE",
        help="share of valid calls sent to /predict/batch (default 0)",
    )
    mix.add_argument(
        "--batch-size", type=_positive(int), default=10, metavar="N", help="rows per batch (10)"
    )
    mix.add_argument(
        "--patient-share",
        type=_share,
        default=0.5,
        metavar="SHARE",
        help='share of rows sent as {"patient": {...}}, not {"features": [...]} (0.5)',
    )
    mix.add_argument(
        "--drift",
        nargs="?",
        const=DEFAULT_PROFILE,
        choices=sorted(PROFILES),
        metavar="PROFILE",
        help="shift the rows sent, so the gateway's drift score reacts; profiles: "
        + "; ".join(f"{name} = {p.describe()}" for name, p in PROFILES.items())
        + f" (default profile {DEFAULT_PROFILE}; shifted rows have no true level)",
    )
    mix.add_argument(
        "--drift-share",
        type=_share,
        metavar="SHARE",
        help="share of rows shifted with --drift, the rest sent as they are (default 1)",
    )
    mix.add_argument(
        "--drift-keep-labels",
        action="store_true",
        help="shifted rows keep the dataset row's level (a covariate shift whose outcomes did "
        "not move), so they count in the accuracy and get --feedback; needs --drift",
    )
    mix.add_argument(
        "--quality",
        type=parse_quality,
        default={},
        metavar="SHARE|KIND=SHARE,...",
        help="share of requests that are rows the gateway's data-quality counters flag; kinds: "
        f"{', '.join(QUALITY_KINDS)} (a repeated row is sent twice under a key of its own); "
        "the report tallies what model_input_quality_total must count (default 0)",
    )
    mix.add_argument(
        "--feedback",
        action="store_true",
        help="after each prediction of a dataset row, POST its true level to /feedback "
        "(not a prediction request: reported apart, left out of latency and reconciliation)",
    )
    mix.add_argument(
        "--sticky-keys",
        type=_sticky_keys,
        default=0,
        metavar="N",
        help="send each prediction request one of N fixed keys (drawn uniformly, the same with "
        "the same --seed) in the canary stickiness header (default 0: no header)",
    )
    mix.add_argument(
        "--sticky-header",
        type=_header_name,
        metavar="NAME",
        help=f"the header --sticky-keys uses (default {STICKY_HEADER}, the gateway's default)",
    )
    mix.add_argument("--dataset", type=Path, metavar="CSV", help="rows to send (the repo's)")
    mix.add_argument("--seed", type=int, metavar="N", help="for a reproducible request sequence")

    out = p.add_argument_group("report and checks")
    out.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    out.add_argument("--plot", type=Path, metavar="FILE.png", help="write a latency plot")
    out.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help='write one JSON line per prediction request: {"sent", "done" (epoch seconds), '
        '"status" (null: no answer), "model_version", "sticky_key"}',
    )
    out.add_argument("--quiet", action="store_true", help="no live progress line")
    out.add_argument(
        "--check-prometheus",
        metavar="URL",
        help="compare the gateway's request counters in Prometheus with what was sent",
    )
    out.add_argument(
        "--prometheus-selector",
        default="",
        metavar="MATCHERS",
        help='label matchers for the gateway\'s series and target, e.g. job="lungwatch-gateway"',
    )
    out.add_argument(
        "--prometheus-timeout",
        type=parse_duration,
        default=90.0,
        metavar="DUR",
        help="how long to wait for each scrape (90s)",
    )
    out.add_argument(
        "--slo-p99",
        type=_positive(float),
        metavar="SECONDS",
        help="exit 1 if the p99 latency of valid requests is above this",
    )
    out.add_argument(
        "--slo-error-rate",
        type=_share,
        metavar="R",
        help="exit 1 if the share of requests that did not get what they deserved is above R",
    )
    return p


@dataclass
class Options:
    """The parsed command line, with the shape of the run resolved."""

    args: argparse.Namespace
    plan: RunPlan
    mix: Mix
    mode: str
    profile: str


def resolve(argv: Sequence[str] | None = None) -> Options:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        parser.error(f"--url must start with http:// or https://, not {args.url!r}")
    plan = RunPlan(
        requests=args.requests,
        max_in_flight=args.max_in_flight,
        on_full=args.on_full,
        timeout=args.timeout,
    )
    bounded = args.duration is not None or args.requests is not None
    duration = args.duration if bounded else 10.0
    if args.concurrency is not None:
        plan.concurrency = args.concurrency
        plan.duration = duration if duration is not None else math.inf
        mode = "closed-loop"
        profile = f"{args.concurrency} users" + (
            f" for {plan.duration:g}s" if math.isfinite(plan.duration) else ""
        )
    else:
        mode = "open-loop"
        if args.steps is not None:
            if args.duration is not None:
                parser.error("--steps carry their own durations; drop --duration")
            shape = profiles.steps(args.steps)
        elif args.ramp is not None:
            if args.duration is None:
                parser.error("--ramp needs --duration")
            start_rate, end_rate = args.ramp
            shape = profiles.ramp(start_rate, end_rate, args.duration)
        else:
            shape = profiles.constant(args.rate or 10.0, duration or math.inf)
        plan.offsets = profiles.schedule(shape)
        profile = shape.describe()
    if args.requests is not None:
        profile += f", at most {args.requests} requests"
    try:
        mix = Mix(args.invalid, args.batch_share, args.patient_share, args.batch_size, args.quality)
    except ValueError as exc:
        parser.error(str(exc))
    if args.drift_share is not None and args.drift is None:
        parser.error("--drift-share needs --drift")
    if args.drift_keep_labels and args.drift is None:
        parser.error("--drift-keep-labels needs --drift")
    if args.quality:
        profile += ", data-quality rows " + ", ".join(
            f"{kind} {share:.0%}" for kind, share in args.quality.items()
        )
    if args.drift is not None:
        share = 1.0 if args.drift_share is None else args.drift_share
        profile += f", drift {args.drift} on {share:.0%} of rows"
    if args.sticky_header is not None and not args.sticky_keys:
        parser.error("--sticky-header needs --sticky-keys")
    if args.sticky_keys:
        plan.sticky_header = args.sticky_header or STICKY_HEADER
        profile += f", {args.sticky_keys} sticky keys"
    if args.feedback:
        profile += ", feedback"
        plan.hooks = (*plan.hooks, FeedbackHook())
    return Options(args, plan, mix, mode, profile)


def row_source(args: argparse.Namespace) -> RowSource:
    rows = load_rows(args.dataset)
    if args.drift is None:
        return RowSource(rows)
    share = 1.0 if args.drift_share is None else args.drift_share
    return DriftingRowSource(rows, PROFILES[args.drift], share, args.drift_keep_labels)


def sticky_keys(args: argparse.Namespace) -> StickyKeys | None:
    return StickyKeys(args.sticky_keys, args.seed) if args.sticky_keys else None


def feedback_hook(plan: RunPlan) -> FeedbackHook | None:
    return next((h for h in plan.hooks if isinstance(h, FeedbackHook)), None)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def slo_checks(report: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    checks = []
    if args.slo_p99 is not None:
        # Judged on valid requests: a refused invalid one is fast and would flatter the tail.
        lat = report["valid_latency_seconds"]
        if not lat["count"]:
            lat = report["latency_seconds"]
        p99 = float(lat["p99"])
        checks.append(
            {
                "name": "p99",
                "ok": lat["count"] > 0 and p99 <= args.slo_p99,
                "detail": f"p99 {p99:.4f}s vs target {args.slo_p99:g}s (n={lat['count']})",
            }
        )
    if args.slo_error_rate is not None:
        rate = report["error_rate"]
        checks.append(
            {
                "name": "error-rate",
                "ok": rate <= args.slo_error_rate,
                "detail": f"{rate:.4%} vs target {args.slo_error_rate:.4%}",
            }
        )
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    options = resolve(argv)
    args = options.args
    try:
        rows = row_source(args)
    except (OSError, KeyError, ValueError) as exc:
        print(f"loadgen: cannot read the dataset: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        factory = PayloadFactory(rows, options.mix, random.Random(args.seed), sticky_keys(args))
    except ValueError as exc:  # the dataset leaves no row of a --quality kind
        print(f"loadgen: --quality: {exc}", file=sys.stderr)
        return EXIT_USAGE
    tally = None
    if args.quality:
        # Against the rows drawn from, unshifted: the served model's training rows when it
        # was trained on this dataset (loadgen.quality).
        tally = QualityTally(Reference.of(row.features for row in rows.rows))
        options.plan.hooks = (tally, *options.plan.hooks)
    log = None
    if args.record is not None:
        try:
            log = RequestLog(args.record)
        except OSError as exc:
            print(f"loadgen: cannot write the record file: {exc}", file=sys.stderr)
            return EXIT_USAGE
        # First: the line is written before any other hook awaits the network.
        options.plan.hooks = (log, *options.plan.hooks)

    probe = baseline = None
    if args.check_prometheus:
        probe = PrometheusProbe(
            args.check_prometheus,
            args.prometheus_selector,
            args.prometheus_timeout,
            quality=tally is not None,
        )
        try:
            # Every target scraped after this instant, settled: earlier traffic is all counted.
            baseline = probe.settled(time.time())
        except PrometheusError as exc:
            print(f"loadgen: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE

    holder: list[Recorder] = []
    started_at = time.time()
    started = time.monotonic()
    interrupted = False
    try:
        asyncio.run(
            run(
                args.url,
                options.plan,
                factory,
                recorder_ready=holder.append,
                progress=None if args.quiet else sys.stderr,
            )
        )
    except KeyboardInterrupt:
        interrupted = True
        print("\nloadgen: interrupted; reporting what was done", file=sys.stderr)
    finally:
        if log is not None:
            log.close()
    finished = time.time()
    elapsed = time.monotonic() - started
    if not holder:  # interrupted before the first send
        return EXIT_INTERRUPTED
    recorder = holder[0]

    report = build_report(
        recorder,
        url=args.url,
        mode=options.mode,
        profile=options.profile + (" (interrupted)" if interrupted else ""),
        elapsed=elapsed,
        closed_loop=options.mode == "closed-loop",
    )
    # Wall-clock bounds, to find the run on the dashboards.
    report["started_at"] = _iso(started_at)
    report["finished_at"] = _iso(finished)
    if isinstance(rows, DriftingRowSource):
        report["drift"] = {
            "profile": rows.profile.name,
            "shifts": rows.profile.describe(),
            "share": rows.share,
            "shifted_rows_sent": recorder.shifted_sent,
            "shifted_rows_answered": recorder.shifted_answered,
            "labels": "kept" if rows.keep_labels else "none",
        }
    quality_bounds = None
    if tally is not None:
        report["quality"] = tally.summary(factory.injected)
        expected, extra = flat(report["quality"]["expected"]), flat(report["quality"]["uncertain"])
        quality_bounds = {
            key: (expected.get(key, 0), expected.get(key, 0) + extra.get(key, 0))
            for key in set(expected) | set(extra)
        }
    if factory.sticky is not None:
        report["sticky"] = sticky_summary(
            recorder, options.plan.sticky_header, len(factory.sticky.keys)
        )
    if log is not None:
        report["record"] = {"path": str(log.path), "lines": log.lines}
    hook = feedback_hook(options.plan)
    if hook is not None:
        report["feedback"] = hook.summary()
    code = EXIT_OK
    if interrupted and probe is not None:
        report["prometheus"] = {"ok": False, "error": "not checked: the run was interrupted"}
    elif probe is not None and baseline is not None:
        try:
            result = reconcile(baseline, probe.settled(finished), recorder, quality_bounds)
            report["prometheus"] = result.as_dict()
            if not result.ok:
                code = EXIT_CHECK_FAILED
        except PrometheusError as exc:
            report["prometheus"] = {"ok": False, "error": str(exc)}
            code = EXIT_UNREACHABLE
    report["slo"] = slo_checks(report, args)
    if not all(c["ok"] for c in report["slo"]):
        code = code or EXIT_CHECK_FAILED
    if recorder.sent and not recorder.responses:
        print(f"loadgen: no request to {args.url} got an answer", file=sys.stderr)
        code = EXIT_UNREACHABLE
    if interrupted:
        code = EXIT_INTERRUPTED
    report["exit_code"] = code

    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        from loadgen.plot import write_plot

        title = f"loadgen {options.mode}: {options.profile}"
        write_plot(recorder, args.plot, title, options.mode == "closed-loop")
    return code
