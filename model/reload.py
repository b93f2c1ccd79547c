"""Hot reload: follow the registry aliases the server serves, and swap in a moved one safely.

Every `interval` seconds (and at once on SIGHUP or POST /admin/reload) the registry is asked
which version each served alias points at. A version that differs from the one served is
fetched and gated in a child process (model.candidate), loaded here in a worker thread,
made to answer a few rows, and only then swapped in (model.slots): no request is answered
by a half-loaded model. A version refused at any step is logged and counted once, and the
old one keeps serving; it is tried again only when the alias moves on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from contract.settings import MODEL_URI
from contract.wire import CHALLENGER, CHAMPION
from model.candidate import (
    REFUSED_LOAD,
    REGISTRY_ERROR,
    ModelInfo,
    Refused,
    ResolvedModel,
)
from model.slots import ModelSlots, ServedModel

log = logging.getLogger("model.reload")

SWAPPED = "swapped"
REMOVED = "removed"
UNCHANGED = "unchanged"  # not counted: the common case of every poll
UNSET = "<unset>"  # the "version" refused while the champion's alias is not set
# A download and gate of a forest takes ~3 s here; a registry or store that hangs must not
# hold the reload lock for ever.
FETCH_TIMEOUT_SECONDS = 180.0
_REPO_ROOT = Path(__file__).resolve().parents[1]


class AliasReader:
    """Which version an alias points at now, as cheaply as the tracking store allows.

    For a `sqlite:///` store (make run, the tests) the alias table is read with the standard
    library: MLflow's SQLAlchemy store costs ~1.3 s of imports and ~50 MB of RSS, which the
    serving process avoids (issue 11). The table is MLflow's `registered_model_aliases`
    (name, alias, version); if a future schema differs, the query fails and the reader falls
    back to MlflowClient. Any other store is asked through MlflowClient in a worker thread."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        sqlite = tracking_uri.startswith("sqlite:///")
        self._sqlite_path = tracking_uri.removeprefix("sqlite:///") if sqlite else None

    async def version(self, name: str, alias: str) -> str | None:
        """The version, or None when the alias is not set. Raises when the store does not
        answer."""
        if self._sqlite_path is not None:
            try:
                return self._from_sqlite(name, alias)
            except sqlite3.Error as exc:
                log.warning("reading MLflow's alias table failed (%s): asking MLflow", exc)
                self._sqlite_path = None
        return await asyncio.to_thread(self._from_mlflow, name, alias)

    def _from_sqlite(self, name: str, alias: str) -> str | None:
        # Read-only and brief: MLflow writes this file; a held lock would block training.
        db = sqlite3.connect(f"file:{self._sqlite_path}?mode=ro", uri=True, timeout=2.0)
        try:
            row = db.execute(
                "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?",
                (name, alias),
            ).fetchone()
        finally:
            db.close()
        return None if row is None else str(row[0])

    def _from_mlflow(self, name: str, alias: str) -> str | None:
        import mlflow

        # All aliases in one call: a missing alias is then absent, where
        # get_model_version_by_alias raises an error whose code differs between stores.
        client = mlflow.tracking.MlflowClient(tracking_uri=self.tracking_uri)
        version = client.get_registered_model(name).aliases.get(alias)
        return None if version is None else str(version)


async def fetch_in_child(uri: str) -> ResolvedModel:
    """model.candidate in a fresh process (never a fork: the server has threads by now)."""
    dest = tempfile.mkdtemp(prefix="lungwatch-model-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )}  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "model.candidate", uri, dest,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(child.communicate(), FETCH_TIMEOUT_SECONDS)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise Refused(
            REGISTRY_ERROR, f"fetching {uri} took over {FETCH_TIMEOUT_SECONDS:g}s"
        ) from None
    try:
        answer: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise Refused(REFUSED_LOAD, f"checking {uri} failed: {tail[0]}") from None
    if answer.get("result") != "ok":
        raise Refused(answer.get("result", REFUSED_LOAD), answer.get("error", "refused"))
    return ResolvedModel(
        ModelInfo(**answer["info"]), answer["path"], answer["reference"], answer["download_dir"]
    )


Build = Callable[[ResolvedModel, str], ServedModel]  # loads, checks; raises Refused


class Reloader:
    def __init__(
        self,
        slots: ModelSlots,
        targets: dict[str, str],  # role -> configured URI
        build: Build,
        count: Callable[[str, str], None],  # (role, result)
        aliases: AliasReader,
        interval_seconds: float,
        fetch: Callable[[str], Awaitable[ResolvedModel]] = fetch_in_child,
    ) -> None:
        self.slots = slots
        self.targets = targets
        self.build = build
        self.count = count
        self.aliases = aliases
        self.interval = interval_seconds
        self.fetch = fetch
        self.results: dict[str, str] = {}  # role -> how its last check ended
        self._refused: dict[str, str] = {}  # role -> the version refused last
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Check now (SIGHUP)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception:  # a bug here must not end reloading; the next round retries
                log.exception("registry check failed")
            try:
                timeout = self.interval if self.interval > 0 else None
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()

    async def check(self) -> dict[str, str]:
        """One check of every role; returns how each ended."""
        async with self._lock:
            for role, uri in self.targets.items():
                self.results[role] = await self._check(role, uri)
        return dict(self.results)

    async def _check(self, role: str, uri: str) -> str:
        served = self.slots.current.role(role)
        match = MODEL_URI.match(uri)
        if match is None:  # runs:/ or a path: nothing to follow
            return UNCHANGED
        name, alias = match["name"], match["alias"]
        if alias is None:  # a fixed version: loaded once (a challenger at start-up)
            version: str | None = match["version"]
        else:
            try:
                version = await self.aliases.version(name, alias)
            except Exception as exc:
                return self._refuse(role, None, Refused(REGISTRY_ERROR, f"registry: {exc}"))
        if version is None:
            if role == CHALLENGER and served is not None:
                self.slots.swap(None, role)
                log.info("challenger alias @%s removed: serving the champion alone", alias)
                self.count(role, REMOVED)
                return REMOVED
            if role == CHAMPION:  # logged and counted once, until the alias is set again
                return self._refuse(
                    role, UNSET, Refused(REGISTRY_ERROR, f"alias @{alias} of {name} is not set")
                )
            return UNCHANGED
        if served is not None and served.info.version == version:
            self._refused.pop(role, None)
            return UNCHANGED
        if self._refused.get(role) == version:
            return self.results.get(role, UNCHANGED)  # counted and logged when refused
        try:
            resolved = await self.fetch(f"models:/{name}/{version}")
            model = await asyncio.to_thread(self.build, resolved, role)
        except Refused as refused:
            if refused.result == REGISTRY_ERROR:  # says nothing of the version: retried
                return self._refuse(role, None, refused)
            return self._refuse(role, version, refused)
        self.slots.swap(model, role)
        self._refused.pop(role, None)
        log.info(
            "%s now version %s (was %s)", role, version, served.info.version if served else "none"
        )
        self.count(role, SWAPPED)
        return SWAPPED

    def _refuse(self, role: str, version: str | None, refused: Refused) -> str:
        if version is None or self._refused.get(role) != version:
            log.error("%s: version %s refused, keeping the one served: %s", role,
                      version or "?", refused)  # fmt: skip
            self.count(role, refused.result)
        if version is not None:
            self._refused[role] = version
        return refused.result
