"""`python -m bench [--quick] [--rounds N] [--out results/bench]`: Lungwatch against bare MLflow
and BentoML on the same registered model (issues 7 and 11), and Lungwatch with a challenger in
shadow or canary, and while its champion is swapped, against Lungwatch alone (issue 23).

Builds (once) the pinned BentoML venv, trains the default model (the seed's forest) into a
temporary MLflow store (and, for the rollout systems, a second version with another seed as
@challenger), then, round by round, starts each system alone on the machine, checks its first
answer against the registered pipeline's, loads it, records what it cost and stops it. The
order of systems rotates each round so none always runs first (cold page cache) or last.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
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
    counter_delta,
    request_body,
    rollout_counters,
    start_system,
    wait_for_challenger,
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
    # The hot swap's one open-loop run: steady for `swap_hold_seconds`, @champion moved, held
    # that long once the new version serves, moved back, held again, then the run is stopped
    # (at the latest after `swap_max_seconds`). A swap (1 s poll, fetch and gate in a child,
    # load, smoke check) takes ~5 s on a quiet machine: ~35 s a run, ~24 s of it steady.
    swap_hold_seconds: float = 8.0
    swap_max_seconds: float = 120.0


QUIET_LOAD = 0.10
# The rollout systems (8) and (9) only compare with (4): the loads issue 23's targets name (8
# connections, 50 req/s) and one step up each, not the whole ladder (~50 s a round each
# instead of ~110; `--rollout-loads all` runs the plan's).
SHORT_CONCURRENCIES = (8, 64)
SHORT_RATES = (50.0, 200.0)
HOT_SWAP_RATE = 200.0
# Requests sent until this long after the new version's first answer count as "during the
# swap": the backlog the swap left drains in that time at 200 req/s.
SWAP_TAIL_S = 1.0
# The second version: the same forest trained with another seed (a real candidate answers
# some rows differently, so the canary's answers are honest about which version scored).
CHALLENGER_SEED = 7


# Full: ~110 s per system per round for (1)-(7), ~50 s for each of (8)-(11): 3 rounds take
# 51-56 minutes.
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
    swap_hold_seconds=4,
)


def plan_for(spec: SystemSpec, plan: Plan, rollout_loads: str = "short") -> Plan:
    """The loads one system runs: the rollout systems a short set (the plan's, when it has
    none of those loads, e.g. `--concurrencies 1`)."""
    if spec.loads != "short" or rollout_loads == "all":
        return plan
    concurrencies = tuple(c for c in plan.concurrencies if c in SHORT_CONCURRENCIES)
    rates = tuple(r for r in plan.rates if r in SHORT_RATES)
    return replace(
        plan, concurrencies=concurrencies or plan.concurrencies, rates=rates or plan.rates
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
        help="extra environment for the Lungwatch processes of systems 4-10, e.g. "
        "LUNGWATCH_GATEWAY_BATCH_MAX_ROWS=32 (repeatable; a system's own setting wins)",
    )
    parser.add_argument(
        "--rollout-loads",
        choices=("short", "all"),
        default="short",
        help="loads of the shadow and canary systems: closed loop at 8 and 64 connections and "
        "open loop at 50 and 200 req/s (short, the default), or the whole plan (all)",
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


def run_load(
    spec: dict[str, Any],
    system: RunningSystem,
    sink_pid: int | None,
    during: Callable[[subprocess.Popen[str]], Any] | None = None,
) -> dict[str, Any]:
    """One load run in its own process, with the servers' CPU time around it; `during` runs
    in the harness while the load does (the hot swap's alias moves), its return value kept
    as the result's "during".

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
    load = subprocess.Popen(
        [PYTHON, "-m", "bench.load", json.dumps(spec)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        side = during(load) if during else None
        stdout, stderr = load.communicate(timeout=spec["duration_s"] + 120)
    except BaseException:
        load.kill()
        load.communicate()
        raise
    wall = time.monotonic() - wall_before
    busy = busy_cpu_seconds() - busy_before
    cpu_used = cpu_seconds(pids) - cpu_before
    by_process = {
        p.name: cpu_seconds([p.pid]) - by_process_before[p.name] for p in system.processes
    }
    others_used = cpu_seconds(others) - others_before
    harness_used = _rusage_delta(resource.getrusage(resource.RUSAGE_CHILDREN), children_before)
    harness_used += _rusage_delta(resource.getrusage(resource.RUSAGE_SELF), self_before)
    if load.returncode != 0:
        raise RuntimeError(f"load run {spec} failed:\n{stderr[-3000:]}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if during is not None:
        result["during"] = side
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
        "loads": system.spec.loads,
    }
    base = {"url": system.url, "payloads": str(payloads)}
    warm_up(system, plan, base, sink_pid)
    out["memory_idle"] = memory(system.server_pids)

    def run(spec: dict[str, Any]) -> dict[str, Any]:
        if system.spec.rollout_mode == "off":
            return run_load(spec, system, sink_pid)
        before = rollout_counters(system.gateway_url)
        result = run_load(spec, system, sink_pid)
        result["rollout"] = counter_delta(before, rollout_counters(system.gateway_url))
        return result

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
        result = run({**spec, "duration_s": plan.closed_seconds})
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
        result = run({**spec, "duration_s": plan.open_seconds})
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


def warm_up(
    system: RunningSystem, plan: Plan, base: Mapping[str, Any], sink_pid: int | None
) -> None:
    """First requests pay lazy imports, first-call caches and pool connects; then a pause, so
    the idle memory that follows has no request in flight (what a quiet process holds)."""
    run_load(
        {**base, "mode": "closed", "concurrency": 8, "duration_s": plan.warmup_seconds},
        system,
        sink_pid,
    )
    time.sleep(plan.pause_seconds)


def measure_hot_swap(
    system: RunningSystem,
    plan: Plan,
    payloads: Path,
    round_index: int,
    log: Any,
    serving: Serving,
    sink_pid: int | None = None,
) -> dict[str, Any]:
    """One open-loop run at 200 req/s during which @champion moves to the second version and,
    once that one serves and a steady stretch has passed, back; per-request send times,
    latencies and versions place every request inside or outside a swap."""
    out: dict[str, Any] = {
        "cold_start_s": system.cold_start_s,
        "memory_started": memory(system.server_pids),
        "loads": system.spec.loads,
    }
    base = {"url": system.url, "payloads": str(payloads)}
    warm_up(system, plan, base, sink_pid)
    out["memory_idle"] = memory(system.server_pids)
    waited = settle(plan, [*system.server_pids, *([sink_pid] if sink_pid else [])])
    spec = {
        **base,
        "mode": "open",
        "rate": HOT_SWAP_RATE,
        "seed": 1000 * (round_index + 1) + int(HOT_SWAP_RATE),
        "duration_s": plan.swap_max_seconds,
        "record": True,
        "stoppable": True,
    }
    result = run_load(
        spec, system, sink_pid, lambda load: move_champion(system, serving, plan, load)
    )
    moves = result.pop("during")
    records = result.pop("records")
    result["quiet_wait_s"] = waited
    result["swaps"] = report.swap_summary(records, moves, SWAP_TAIL_S)
    out["memory_loaded"] = memory(system.server_pids)
    out["hot_swap"] = result
    swaps = result["swaps"]
    p99_in, p99_out = swaps.get("p99_during_ms"), swaps.get("p99_outside_ms")
    to_answer = ", ".join(
        f"v{w['to']} {w['seconds_to_answer']:.1f} s" if w["answered"] else f"v{w['to']} NEVER"
        for w in swaps["windows"]
    )
    log(
        f"    hot swap at {HOT_SWAP_RATE:g}/s achieved {result['achieved_rps']:6.1f}  move to "
        f"first answer: {to_answer}  p99 during {p99_in or float('nan'):6.1f} ms, outside "
        f"{p99_out or float('nan'):6.1f} ms  errors {result['errors']}  "
        f"other load {100 * (result['foreign_load'] or 0):3.0f}%"
    )
    return out


def move_champion(
    system: RunningSystem, serving: Serving, plan: Plan, load: subprocess.Popen[str]
) -> list[dict[str, Any]]:
    """In the harness, while the hot swap's load runs: hold, @champion to the second version,
    wait until the model server serves it, hold, back, hold, and stop the load. The alias is
    put back whatever happens, so the next system serves the first version again."""
    from mlflow.tracking import MlflowClient

    from contract.settings import REGISTERED_MODEL_NAME, SERVING_ALIAS

    if serving.challenger is None:
        raise RuntimeError("the hot swap needs a second registered version")
    client = MlflowClient(tracking_uri=serving.model.tracking_uri)
    first, second = serving.model.version, serving.challenger.version
    hold = plan.swap_hold_seconds
    # Leave room for the move back and the steady stretch after it before the load's own end.
    deadline = time.monotonic() + plan.swap_max_seconds - 2 * hold - 2
    moves: list[dict[str, Any]] = []
    try:
        time.sleep(hold)
        for old, new in ((first, second), (second, first)):
            moved_at = time.monotonic()
            client.set_registered_model_alias(REGISTERED_MODEL_NAME, SERVING_ALIAS, new)
            set_s = time.monotonic() - moved_at
            seen_at = served_version_seen(system.model_server_url, new, deadline)
            moves.append({"from": old, "to": new, "moved_at": moved_at, "alias_set_s": set_s,
                          "served_seen_at": seen_at})  # fmt: skip
            time.sleep(hold)
    finally:
        client.set_registered_model_alias(REGISTERED_MODEL_NAME, SERVING_ALIAS, first)
        if load.poll() is None:
            load.send_signal(signal.SIGUSR1)
    return moves


def served_version_seen(model_server_url: str, version: str, deadline: float) -> float | None:
    """When the model server's GET /model first names `version` (polled every 0.25 s: a
    coarse signal to pace the moves; the requests' own answers date the swap)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(f"{model_server_url}/model", timeout=2).json().get("version") == version:
                return time.monotonic()
        time.sleep(0.25)
    return None


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
        challenger = None
        if any(s.needs_second_version for s in systems):
            challenger = second_version(args.store, tmp / "store", log)
        serving = Serving(model, files, venv, challenger)
        payloads = write_payloads(tmp)
        from contract.dataset import read_rows

        first_row = read_rows()[0].features
        reference = reference_answer(files, first_row)
        # Each version's own pipeline answer: a canary's first answer may be the challenger's.
        references = {model.version: reference}
        if challenger is not None:
            challenger_files = model_files(challenger, tmp / "challenger-model")
            references[challenger.version] = reference_answer(challenger_files, first_row)
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
            "challenger": f"{challenger.model_uri} v{challenger.version} "
            + (
                f"(from {args.store})"
                if args.store
                else f"(python -m model.train --seed {CHALLENGER_SEED} --alias challenger)"
            )
            if challenger
            else None,
            "rollout_loads": args.rollout_loads,
            "onnx_sha256": hashlib.sha256(files.onnx.read_bytes()).hexdigest()[:16],
            "bentoml": bentoml_env.requirements((REPO_ROOT / "uv.lock").read_text())
            if venv
            else None,
            "reference_answer": asdict(reference),
            "reference_answers": {v: asdict(a) for v, a in references.items()},
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
                    spec,
                    serving,
                    references,
                    tmp,
                    sink,
                    plan_for(spec, plan, args.rollout_loads),
                    payloads,
                    round_index,
                    log,
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
    references: Mapping[str, Answer],
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
        reference = first_reference(spec, system.first_answer, references, serving.model.version)
        problem = mismatch(answer, reference)
        if problem:
            raise RuntimeError(
                f"{spec.key} answers the first dataset row differently from the registered "
                f"pipeline: {problem} ({answer} against {reference})"
            )
        log(
            f"  first prediction {system.cold_start_s:.2f} s after start, matching the "
            f"pipeline's; {len(system.server_pids)} root process(es)"
        )
        challenger_ready = None
        if serving.challenger is not None and spec.rollout_mode != "off":
            challenger_ready = wait_for_challenger(system, serving.challenger.version)
            log(f"  challenger served {challenger_ready:.2f} s after start")
        sink_before = sink.stats() if sink and spec.otlp else {}
        sink_pid = sink.process.pid if sink is not None else None
        if spec.loads == "hot_swap":
            result = measure_hot_swap(
                system, plan, payloads[spec.kind], round_index, log, serving, sink_pid
            )
        else:
            result = measure(system, plan, payloads[spec.kind], round_index, log, sink_pid)
        if challenger_ready is not None:
            result["challenger_ready_s"] = challenger_ready
        if serving.challenger is not None and spec.needs_second_version:
            result["served_versions"] = {
                "champion": serving.model.version,
                "challenger": serving.challenger.version,
            }
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


def registered_model(workdir: Path, model_uri: str | None = None) -> TrainedModel:
    """The model an alias (the serving one by default) names in an existing store, as
    train_model describes one."""
    from mlflow.tracking import MlflowClient

    from contract.settings import DEFAULT_MODEL_URI

    workdir = workdir.resolve()
    tracking_uri = f"sqlite:///{workdir / 'mlruns.db'}"
    model_uri = model_uri or DEFAULT_MODEL_URI
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    return TrainedModel(tracking_uri, model_uri, str(version.version), str(version.run_id),
                        workdir, {})  # fmt: skip


def second_version(store: Path | None, workdir: Path, log: Any) -> TrainedModel:
    """@challenger: trained with another seed into the run's store (~25 s), or the one an
    existing store (--store) already holds; the benchmark never writes into a given store."""
    from bench.systems import CHALLENGER_URI

    if store is None:
        began = time.monotonic()
        model = train_model(workdir, "--seed", str(CHALLENGER_SEED), "--alias", "challenger")
        log(f"trained the second version (v{model.version}) in {time.monotonic() - began:.0f} s")
        return model
    try:
        return registered_model(store, CHALLENGER_URI)
    except Exception as exc:  # MLflow's own error names the missing alias
        raise SystemExit(
            f"{store} has no {CHALLENGER_URI} ({exc}): register one (MLFLOW_TRACKING_URI="
            f"sqlite:///{store.resolve() / 'mlruns.db'} python -m model.train --alias challenger "
            f"--seed {CHALLENGER_SEED}) or leave out the systems shadow, canary and hot_swap"
        ) from None


def first_reference(
    spec: SystemSpec, body: Any, references: Mapping[str, Answer], champion: str
) -> Answer:
    """The answer a system's first prediction must match: the pipeline of the version that
    Lungwatch says scored it (a canary may route the first row to the challenger)."""
    version = str(body.get("model_version", champion)) if spec.kind == "lungwatch" else champion
    if version not in references:
        raise RuntimeError(
            f"{spec.key}'s first answer names version {version}, which no benchmarked model "
            f"is (versions {', '.join(sorted(references))})"
        )
    return references[version]


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
