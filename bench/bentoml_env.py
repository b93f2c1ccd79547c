"""The benchmark's own BentoML virtual environment: pinned, built once, reused, never the project's.

BentoML is the competitor, not a dependency: it goes into a venv under results/tmp/ (ignored
by git) with onnxruntime, scikit-learn, joblib and their numeric stack at the versions uv.lock
pins for the project, so both sides load the same artifacts with the same libraries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devtools.procs import REPO_ROOT, VENV_BIN

BENTOML_VERSION = "1.4.40"
# What loads and runs the model; the versions come from uv.lock, so they never drift from
# what Lungwatch runs (a joblib pickle needs the same scikit-learn and numpy to load).
LOCKED = ("onnxruntime", "scikit-learn", "joblib", "numpy", "scipy", "threadpoolctl")
VENVS_DIR = REPO_ROOT / "results" / "tmp" / "bench-venvs"
STAMP = "bench-requirements.json"
# Part of the venv's key: a change in how it is built (e.g. bytecode compiled at install, which
# matters where PYTHONDONTWRITEBYTECODE is set) builds a new one.
BUILD = "compiled-bytecode"
# import name and distribution name of what the service must find at the pinned versions
CHECKED = {"bentoml": "bentoml", "onnxruntime": "onnxruntime", "sklearn": "scikit-learn"}


def locked_versions(
    lock_text: str,
    names: Sequence[str] = LOCKED,
    environment: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The version uv.lock pins for each name on this interpreter (or `environment`).

    A universal lock may hold several versions of one package, each for the Pythons its
    resolution markers name; the one whose markers hold here is the one `uv sync` installed.
    """
    from packaging.markers import Marker

    env = dict(environment) if environment is not None else None
    lock = tomllib.loads(lock_text)
    found: dict[str, set[str]] = {}
    for package in lock.get("package", []):
        if package.get("name") not in names or "version" not in package:
            continue
        markers = package.get("resolution-markers")
        if markers and not any(Marker(m).evaluate(env) for m in markers):
            continue
        found.setdefault(package["name"], set()).add(package["version"])
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"uv.lock pins no version of {', '.join(missing)} for this Python")
    several = {n: sorted(v) for n, v in found.items() if len(v) > 1}
    if several:
        raise RuntimeError(f"uv.lock pins several versions of {several} for this Python")
    return {n: found[n].pop() for n in names}


def requirements(lock_text: str) -> list[str]:
    pins = locked_versions(lock_text)
    return [f"bentoml=={BENTOML_VERSION}", *(f"{n}=={v}" for n, v in pins.items())]


def venv_dir(reqs: Sequence[str], python_version: str, base: Path = VENVS_DIR) -> Path:
    """One directory per (requirements, Python) so a changed pin builds a new venv."""
    parts = [BUILD, python_version, *sorted(reqs)]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return base / f"bentoml-{BENTOML_VERSION}-{key}"


def is_ready(path: Path, reqs: Sequence[str]) -> bool:
    stamp = path / STAMP
    if not stamp.exists() or not (path / "bin" / "bentoml").exists():
        return False
    try:
        return bool(json.loads(stamp.read_text()) == sorted(reqs))
    except ValueError:
        return False


def ensure(log: Callable[[str], None] = print) -> Path:
    """The venv's directory, built (a minute or two, once) when missing or stale."""
    reqs = requirements((REPO_ROOT / "uv.lock").read_text())
    path = venv_dir(reqs, f"{sys.version_info.major}.{sys.version_info.minor}")
    if is_ready(path, reqs):
        return path
    if path.resolve() == Path(sys.prefix).resolve():
        raise RuntimeError("refusing to install BentoML into the project's venv")
    log(f"building the BentoML venv {path} ({', '.join(reqs)})")
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the interpreter behind the project's venv, not the venv itself
    base_python = getattr(sys, "_base_executable", sys.executable)
    uv = VENV_BIN / "uv"
    if uv.exists():
        run([str(uv), "venv", "--quiet", "--python", base_python, str(path)])
        # bytecode compiled now, so no system's first cold start pays for it
        run([str(uv), "pip", "install", "--quiet", "--compile-bytecode",
             "--python", str(path / "bin" / "python"), *reqs])  # fmt: skip
    else:
        run([base_python, "-m", "venv", str(path)])
        run([str(path / "bin" / "python"), "-m", "pip", "install", "--quiet", *reqs])
    check_versions(path, reqs)
    (path / STAMP).write_text(json.dumps(sorted(reqs)))
    return path


def check_versions(path: Path, reqs: Sequence[str]) -> None:
    """Fail unless the venv imports BentoML, onnxruntime and scikit-learn at the pins."""
    wanted = dict(r.split("==", 1) for r in reqs)
    code = (
        "import importlib, json; print(json.dumps({m: importlib.import_module(m).__version__ "
        f"for m in {sorted(CHECKED)!r}}}))"
    )
    done = subprocess.run(
        [str(path / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the BentoML venv does not import:\n{done.stderr[-2000:]}")
    versions = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {
        dist: (versions[mod], wanted[dist])
        for mod, dist in CHECKED.items()
        if versions[mod] != wanted[dist]
    }
    if wrong:
        raise RuntimeError(f"the BentoML venv has other versions than pinned: {wrong}")


def run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-3000:]
        raise RuntimeError(f"{' '.join(argv[:3])} failed:\n{output}")
