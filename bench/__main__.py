"""`python -m bench [--quick] [--rounds N] [--out results/bench]`: Lungwatch against bare MLflow
and BentoML on the same registered model (issues 7 and 11).

Builds (once) the pinned BentoML venv, trains the default model (the seed's forest) into a
temporary MLflow store, then, round by round, starts each system alone on the machine, checks
its first answer against the registered pipeline's, loads it, records what it cost and stops
it. The order of systems rotates each round so none always runs first (cold page cache) or last.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import bentoml_env, report
from bench.artifacts import Answer, mismatch, model_files, normalize, reference_answer
from bench.systems import (
    KINDS,
    SYSTEMS,
    RunningSystem,
    Serving,
    Sink,
    SystemSpec,
    request_body,
    start_system,
)
from devtools.procs import PYTHON, REPO_ROOT, TrainedModel, cpu_seconds, memory, train_model


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup_seconds: float
    closed_seconds: float
    open_seconds: float
    concurrencies: tuple[int, ...] = (1, 8, 64)
    # Raised for a system only while it keeps the previous rate.
    rates: tuple[float, ...] = (25, 50, 100, 200, 400, 800)
    # Between runs: lets a server finish a backlog and its exporters flush before the next run.
    pause_seconds: float = 1.0
    # The machine may be shared: before a run, wait up to this long for other load to drop
    # under QUIET_LOAD, so fewer runs overlap someone else's burst of work.
    quiet_wait_seconds: float = 5.0


QUIET_LOAD = 0.10


# Full: ~110 s per system per round, so 3 rounds of 7 systems take 40-45 minutes.
FULL = Plan(rounds=3, warmup_seconds=3, closed_seconds=6, open_seconds=10)
# Quick: one short round, ~7 minutes with training, proving every system starts and every
# load runs.
# Open-loop runs stay at 4 s: a run counts as kept only if its last answers come within ~5 %
# of its duration, and a shorter run would fail a system for a 0.1 s latency tail.
QUICK = Plan(
    rounds=1,
    warmup_seconds=1,
    closed_seconds=1.5,
    open_seconds=4,
    pause_seconds=0.3,
    quiet_wait_seconds=0,
)


def round_order(systems: Sequence[SystemSpec], round_index: int) -> list[SystemSpec]:
    """Round r starts at the r-th system, so none always runs first (cold page cache)."""
    shift = round_index % len(systems)
    return [*systems[shift:], *systems[:shift]]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round (smoke run)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench")
    parser.add_argument(
        "--systems",
        default=",".join(s.key for s in SYSTEMS),
        help="comma-separated subset of: " + ", ".join(s.key for s in SYSTEMS),
    )
    parser.add_argument("--closed-seconds", type=float, help="override each closed-loop run")
    parser.add_argument("--open-seconds", type=float, help="override each open-loop run")
    parser.add_argument("--concurrencies", help="override, e.g. 1,8,64")
    parser.add_argument("--rates", help="override the open-loop rates, e.g. 25,50,100")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the store and the logs")
    parser.add_argument(
        "--store",
        type=Path,
        help="serve the model already registered in DIR/mlruns.db (artifacts under DIR) "
        "instead of training one",
    )
    parser.add_argument(
        "--lungwatch-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the Lungwatch processes of systems 4-6, e.g. "
        "LUNGWATCH_GATEWAY_BATCH_MAX_ROWS=32 (repeatable; a system's own setting wins)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rebuild the summary and markdown of an earlier run's JSON file",
    )
    return parser.parse_args(argv)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = psutil.virtual_memory().total / 2**30
    return (
        f"{psutil.cpu_count()} logical CPUs ({cpu}), {mem_gb:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def code_digest() -> str:
    """A digest of the code the systems run (api/, model/, telemetry/), working tree included.

    Each system start records it: a benchmark that runs from a working tree someone is
    editing measures several versions, and the report must say so.
    """
    digest = hashlib.sha256()
    for package in ("api", "model", "telemetry"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


def run_load(spec: dict[str, Any], system: RunningSystem, sink_pid: int | None) -> dict[str, Any]:
    """One load run in its own process, with the servers' CPU time around it.

    Also measures the machine's other load: busy CPU not spent by the servers, the load
    client, the OTLP sink or this harness. The machine may be shared, and a run next to
    someone's test suite is not comparable; the report shows that share for every system.
    """
    pids = system.server_pids
    others = [sink_pid] if sink_pid else []
    # per process (gateway vs model server), so the report can say where the CPU goes
    by_process_before = {p.name: cpu_seconds([p.pid]) for p in system.processes}
    cpu_before = cpu_seconds(pids)
    others_before = cpu_seconds(others)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    busy_before = busy_cpu_seconds()
    wall_before = time.monotonic()
    done = subprocess.run(
        [PYTHON, "-m", "bench.load", json.dumps(spec)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=spec["duration_s"] + 120,
    )
    wall = time.monotonic() - wall_before
    busy = busy_cpu_seconds() - busy_before
    cpu_used = cpu_seconds(pids) - cpu_before
    by_process = {
        p.name: cpu_seconds([p.pid]) - by_process_before[p.name] for p in system.processes
    }
    others_used = cpu_seconds(others) - others_before
    harness_used = _rusage_delta(resource.getrusage(resource.RUSAGE_CHILDREN), children_before)
    harness_used += _rusage_delta(resource.getrusage(resource.RUSAGE_SELF), self_before)
    if done.returncode != 0:
        raise RuntimeError(f"load run {spec} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["server_cpu_s"] = cpu_used
    if result["requests"]:
        result["cpu_ms_per_request_by_process"] = {
            name: 1000 * used / result["requests"] for name, used in by_process.items()
        }
    result["cpu_ms_per_request"] = (
        1000 * cpu_used / result["requests"] if result["requests"] else None
    )
    foreign = max(0.0, busy - cpu_used - others_used - harness_used)
    result["foreign_load"] = foreign / (wall * (psutil.cpu_count() or 1)) if wall > 0 else None
    return result


def settle(plan: Plan, pids: Sequence[int]) -> float:
    """Pause between runs, then wait (bounded) until the machine's other load is low.

    Returns the seconds spent waiting for quiet, which the JSON records per run.
    """
    time.sleep(plan.pause_seconds)
    began = time.monotonic()
    while time.monotonic() - began < plan.quiet_wait_seconds:
        busy_before, ours_before = busy_cpu_seconds(), cpu_seconds(pids)
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(1.0)
        ours = cpu_seconds(pids) - ours_before
        ours += _rusage_delta(resource.getrusage(resource.RUSAGE_SELF), self_before)
        other = (busy_cpu_seconds() - busy_before - ours) / (psutil.cpu_count() or 1)
        if other < QUIET_LOAD:
            break
    return time.monotonic() - began


def _rusage_delta(after: Any, before: Any) -> float:
    return float((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))


def measure(
    system: RunningSystem,
    plan: Plan,
    payloads: Path,
    round_index: int,
    log: Any,
    sink_pid: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "cold_start_s": system.cold_start_s,
        "memory_started": memory(system.server_pids),
        "open_rates_planned": list(plan.rates),
    }
    base = {"url": system.url, "payloads": str(payloads)}
    # Warm-up: first requests pay lazy imports, first-call caches and pool connects.
    run_load(
        {**base, "mode": "closed", "concurrency": 8, "duration_s": plan.warmup_seconds},
        system,
        sink_pid,
    )
    # Idle: loaded and warmed, no request in flight (what a quiet production process holds).
    time.sleep(plan.pause_seconds)
    out["memory_idle"] = memory(system.server_pids)
    peak: dict[str, int] = {}

    def sample_memory() -> None:
        nonlocal peak
        now = memory(system.server_pids)
        if now["rss_bytes"] > peak.get("rss_bytes", 0):
            peak = now

    out["closed"] = []
    quiet_pids = [*system.server_pids, *([sink_pid] if sink_pid else [])]
    for concurrency in plan.concurrencies:
        waited = settle(plan, quiet_pids)
        spec = {**base, "mode": "closed", "concurrency": concurrency}
        result = run_load({**spec, "duration_s": plan.closed_seconds}, system, sink_pid)
        result["quiet_wait_s"] = waited
        sample_memory()
        out["closed"].append(result)
        log(
            f"    closed c={concurrency:<3} {result['throughput_rps']:7.1f} req/s  "
            f"p50 {result['latency'].get('p50_ms', float('nan')):6.1f} ms  "
            f"cpu {result['cpu_ms_per_request'] or 0:5.2f} ms/req  errors {result['errors']}  "
            f"other load {100 * (result['foreign_load'] or 0):3.0f}%"
        )
    out["open"] = []
    for rate in plan.rates:
        waited = settle(plan, quiet_pids)
        # The same seed for every system in a round: identical arrival schedules.
        seed = 1000 * (round_index + 1) + int(rate)
        spec = {**base, "mode": "open", "rate": rate, "seed": seed}
        result = run_load({**spec, "duration_s": plan.open_seconds}, system, sink_pid)
        result["quiet_wait_s"] = waited
        sample_memory()
        out["open"].append(result)
        p50, p99 = (result["latency"].get(k, float("nan")) for k in ("p50_ms", "p99_ms"))
        log(
            f"    open {rate:5g}/s achieved {result['achieved_rps']:6.1f}  p50 {p50:6.1f}  "
            f"p99 {p99:7.1f} ms  {'kept' if result['kept'] else 'NOT KEPT'}  "
            f"other load {100 * (result['foreign_load'] or 0):3.0f}%"
        )
        if not result["kept"]:
            break  # a higher rate would only measure a deeper backlog
    out["memory_loaded"] = peak
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render(args.render)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    if args.closed_seconds:
        plan = replace(plan, closed_seconds=args.closed_seconds)
    if args.open_seconds:
        plan = replace(plan, open_seconds=args.open_seconds)
    if args.concurrencies:
        plan = replace(plan, concurrencies=tuple(int(c) for c in args.concurrencies.split(",")))
    if args.rates:
        plan = replace(plan, rates=tuple(float(r) for r in args.rates.split(",")))
    wanted = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = set(wanted) - {s.key for s in SYSTEMS}
    if unknown:
        raise SystemExit(f"unknown systems: {', '.join(sorted(unknown))}")
    systems: list[SystemSpec] = [s for s in SYSTEMS if s.key in wanted]
    stem = "quick" if args.quick else "results"
    extra_env = dict(item.split("=", 1) for item in args.lungwatch_env)
    systems = [
        replace(s, env={**extra_env, **s.env}) if s.kind == "lungwatch" else s for s in systems
    ]

    def log(message: str) -> None:
        print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="lungwatch-bench-"))
    log(
        f"work dir {tmp}; "
        + (f"serving the model in {args.store}" if args.store else "training the default model")
    )
    began = time.monotonic()
    sink: Sink | None = None
    try:
        venv = None
        if any(s.kind == "bentoml" for s in systems):
            venv = bentoml_env.ensure(log)
            log(f"BentoML venv {venv}")
        model = registered_model(args.store) if args.store else train_model(tmp / "store")
        files = model_files(model, tmp / "model")
        serving = Serving(model, files, venv)
        payloads = write_payloads(tmp)
        from contract.dataset import read_rows

        reference = reference_answer(files, read_rows()[0].features)
        if any(s.otlp for s in systems):
            sink = Sink(tmp)
        meta = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(),
            "command": " ".join(["python -m bench", *(sys.argv[1:] if argv is None else argv)]),
            "machine": machine(),
            "load_average_at_start": list(os.getloadavg()),
            "quick": args.quick,
            "model": f"{model.model_uri} v{model.version} (python -m model.train defaults)",
            "onnx_sha256": hashlib.sha256(files.onnx.read_bytes()).hexdigest()[:16],
            "bentoml": bentoml_env.requirements((REPO_ROOT / "uv.lock").read_text())
            if venv
            else None,
            "reference_answer": asdict(reference),
            "labels": {s.key: s.label for s in systems},
            "lungwatch_env": {s.key: dict(s.env) for s in systems if s.kind == "lungwatch"},
            **{k: v for k, v in asdict(plan).items()},
        }
        rounds: list[dict[str, Any]] = []
        for round_index in range(plan.rounds):
            order = round_order(systems, round_index)
            log(f"round {round_index + 1}/{plan.rounds}: {', '.join(s.key for s in order)}")
            results: dict[str, Any] = {}
            for spec in order:
                results[spec.key] = run_system(
                    spec, serving, reference, tmp, sink, plan, payloads, round_index, log
                )
            # keep the listing order stable whatever the running order was
            rounds.append(
                {
                    "order": [s.key for s in order],
                    "systems": {s.key: results[s.key] for s in systems},
                }
            )
            data = {"meta": meta, "rounds": rounds, "summary": report.summarize(rounds)}
            md_path, json_path = report.write(data, args.out, stem)
        meta["duration_min"] = round((time.monotonic() - began) / 60, 1)
        data = {"meta": meta, "rounds": rounds, "summary": report.summarize(rounds)}
        md_path, json_path = report.write(data, args.out, stem)
        print(md_path.read_text())
        log(f"wrote {md_path} and {json_path} in {meta['duration_min']} min")
    finally:
        if sink is not None:
            sink.stop()
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def render(json_path: Path) -> int:
    """Recompute the summary of stored rounds (e.g. after a report change) and rewrite both."""
    data = json.loads(json_path.read_text())
    data["summary"] = report.summarize(data["rounds"])
    md_path, _ = report.write(data, json_path.parent, json_path.stem)
    print(md_path.read_text())
    return 0


def run_system(
    spec: SystemSpec,
    serving: Serving,
    reference: Answer,
    tmp: Path,
    sink: Sink | None,
    plan: Plan,
    payloads: dict[str, Path],
    round_index: int,
    log: Any,
) -> dict[str, Any]:
    digest = code_digest()
    log(f"  {spec.label}: starting (code {digest})")
    first = json.loads(payloads[spec.kind].read_text())[0]
    system = start_system(spec, serving, tmp, sink.url if sink and spec.otlp else None, first)
    try:
        answer = normalize(spec.kind, system.first_answer)
        problem = mismatch(answer, reference)
        if problem:
            raise RuntimeError(
                f"{spec.key} answers the first dataset row differently from the registered "
                f"pipeline: {problem} ({answer} against {reference})"
            )
        sink_before = sink.stats() if sink and spec.otlp else {}
        log(
            f"  first prediction {system.cold_start_s:.2f} s after start, matching the "
            f"pipeline's; {len(system.server_pids)} root process(es)"
        )
        sink_pid = sink.process.pid if sink is not None else None
        result = measure(system, plan, payloads[spec.kind], round_index, log, sink_pid)
        result["first_answer"] = system.first_answer
        result["first_answer_max_diff"] = max(
            abs(a - b) for a, b in zip(answer.probabilities, reference.probabilities, strict=True)
        )
        result["code_digest"] = digest
        if sink is not None and spec.otlp:
            after = sink.stats()
            result["otlp_received"] = {k: v - sink_before.get(k, 0) for k, v in after.items()}
        log(
            f"  RSS idle {result['memory_idle'].get('rss_bytes', 0) / 1e6:.0f} MB, after load "
            f"{result['memory_loaded'].get('rss_bytes', 0) / 1e6:.0f} MB in "
            f"{result['memory_loaded'].get('processes', 0)} processes"
        )
        return result
    finally:
        system.stop()


def registered_model(workdir: Path) -> TrainedModel:
    """The model the serving alias names in an existing store, as train_model describes one."""
    from mlflow.tracking import MlflowClient

    from contract.settings import DEFAULT_MODEL_URI

    workdir = workdir.resolve()
    tracking_uri = f"sqlite:///{workdir / 'mlruns.db'}"
    model_uri = DEFAULT_MODEL_URI
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    return TrainedModel(tracking_uri, model_uri, str(version.version), str(version.run_id),
                        workdir, {})  # fmt: skip


def write_payloads(tmp: Path) -> dict[str, Path]:
    """Every dataset row as a single-row request body, per request shape."""
    from contract.dataset import read_rows
    from contract.features import FEATURE_NAMES

    rows = [row.features for row in read_rows()]
    paths: dict[str, Path] = {}
    for kind in KINDS:
        bodies = [request_body(kind, [int(v) for v in row], FEATURE_NAMES) for row in rows]
        path = tmp / f"payloads-{kind}.json"
        path.write_text(json.dumps(bodies))
        paths[kind] = path
    return paths


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C, so every started server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
