"""Hot reload (model.reload) and the served slots (model.slots): which alias moves are fetched,
swapped, refused or removed, what is counted, and that a request keeps the models it read.

No registry, no child process: the alias reader, the fetch and the build are fakes with the
shapes model.serve gives the Reloader; the slots hold ServedModels of dummy models.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from contract.settings import DEFAULT_MODEL_URI
from contract.wire import CHALLENGER, CHAMPION, MODEL_ROLE_HEADER, MODEL_VERSION_HEADER
from model.candidate import (
    REFUSED_GATE,
    REFUSED_LOAD,
    REGISTRY_ERROR,
    ModelInfo,
    Refused,
    ResolvedModel,
)
from model.reload import REMOVED, SWAPPED, UNCHANGED, AliasReader, Reloader
from model.slots import ModelSlots, ServedModel

NAME = DEFAULT_MODEL_URI.removeprefix("models:/").split("@")[0]
CHAMPION_URI = f"models:/{NAME}@champion"
CHALLENGER_URI = f"models:/{NAME}@challenger"
TARGETS = {CHAMPION: CHAMPION_URI, CHALLENGER: CHALLENGER_URI}


class Dummy:
    """Stands in for the pyfunc and the RiskModel: the slots never call them."""


def served(version: str, role: str = CHAMPION) -> ServedModel:
    info = ModelInfo(NAME, version, f"run-{version}", f"models:/{NAME}/{version}", "onnx")
    return ServedModel(role, info, Dummy(), Dummy(), None)


class FakeAliases:
    """The registry's aliases: alias -> version (absent: not set); `error` when it is down."""

    def __init__(self, **versions: str) -> None:
        self.versions: dict[str, str] = dict(versions)
        self.error: Exception | None = None
        self.asked: list[tuple[str, str]] = []

    async def version(self, name: str, alias: str) -> str | None:
        self.asked.append((name, alias))
        if self.error is not None:
            raise self.error
        return self.versions.get(alias)


class FakeFetch:
    """Resolves `models:/name/version`, or raises the Refused set for that version."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.refuse: dict[str, Refused] = {}

    async def __call__(self, uri: str) -> ResolvedModel:
        self.calls.append(uri)
        version = uri.rsplit("/", 1)[1]
        if version in self.refuse:
            raise self.refuse[version]
        info = ModelInfo(NAME, version, f"run-{version}", uri)
        return ResolvedModel(info, f"/nowhere/{version}", {"counts": {}}, f"/nowhere/{version}")


class FakeBuild:
    """Builds a ServedModel as model.serve.build_served would (or refuses, per version)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.refuse: dict[str, Refused] = {}

    def __call__(self, resolved: ResolvedModel, role: str) -> ServedModel:
        self.calls.append((resolved.info.version, role))
        if resolved.info.version in self.refuse:
            raise self.refuse[resolved.info.version]
        return ServedModel(role, resolved.info, Dummy(), Dummy(), resolved.reference)


class Setup:
    def __init__(
        self,
        aliases: FakeAliases,
        champion: str = "2",
        challenger: str | None = None,
        targets: dict[str, str] = TARGETS,
    ) -> None:
        self.aliases = aliases
        self.slots = ModelSlots(served(champion))
        if challenger is not None:
            self.slots.swap(served(challenger, CHALLENGER), CHALLENGER)
        self.fetch = FakeFetch()
        self.build = FakeBuild()
        self.counted: list[tuple[str, str]] = []
        self.reloader = Reloader(
            self.slots,
            targets,
            self.build,
            lambda role, result: self.counted.append((role, result)),
            aliases,  # type: ignore[arg-type]
            interval_seconds=0,
            fetch=self.fetch,
        )

    def check(self) -> dict[str, str]:
        return asyncio.run(self.reloader.check())

    def versions(self) -> tuple[str, str | None]:
        current = self.slots.current
        challenger = current.challenger
        return current.champion.info.version, challenger.info.version if challenger else None


# --- Reloader -----------------------------------------------------------------------------


def test_an_unchanged_alias_fetches_nothing() -> None:
    s = Setup(FakeAliases(champion="2", challenger="5"), challenger="5")
    before = s.slots.current
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: UNCHANGED}
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: UNCHANGED}
    assert s.fetch.calls == [] and s.build.calls == [] and s.counted == []
    assert s.slots.current is before
    assert s.aliases.asked == [(NAME, "champion"), (NAME, "challenger")] * 2


def test_a_moved_alias_is_fetched_built_swapped_and_counted() -> None:
    s = Setup(FakeAliases(champion="3"))
    before = s.slots.current
    assert s.check() == {CHAMPION: SWAPPED, CHALLENGER: UNCHANGED}
    assert s.fetch.calls == [f"models:/{NAME}/3"]  # the version, not the alias: it may move on
    assert s.build.calls == [("3", CHAMPION)]
    assert s.versions() == ("3", None)
    assert s.slots.champion.role == CHAMPION and s.slots.champion.reference == {"counts": {}}
    assert s.counted == [(CHAMPION, SWAPPED)]
    assert before.champion.info.version == "2"  # what a request read before is untouched
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: UNCHANGED}
    assert s.fetch.calls == [f"models:/{NAME}/3"] and s.counted == [(CHAMPION, SWAPPED)]


def test_a_new_challenger_alias_loads_a_challenger() -> None:
    s = Setup(FakeAliases(champion="2", challenger="6"))
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: SWAPPED}
    assert s.build.calls == [("6", CHALLENGER)]
    assert s.versions() == ("2", "6")
    assert s.slots.current.challenger is not None
    assert s.slots.current.challenger.role == CHALLENGER
    assert s.counted == [(CHALLENGER, SWAPPED)]


def test_a_refused_version_is_counted_once_kept_out_and_retried_when_the_alias_moves() -> None:
    aliases = FakeAliases(champion="3")
    s = Setup(aliases)
    s.fetch.refuse["3"] = Refused(REFUSED_GATE, "version 3: onnx differs from its pipeline")
    assert s.check()[CHAMPION] == REFUSED_GATE
    assert s.versions() == ("2", None)
    assert s.counted == [(CHAMPION, REFUSED_GATE)]

    # Same version next poll: neither fetched again nor counted again; still reported.
    assert s.check()[CHAMPION] == REFUSED_GATE
    assert s.check()[CHAMPION] == REFUSED_GATE
    assert s.fetch.calls == [f"models:/{NAME}/3"]
    assert s.counted == [(CHAMPION, REFUSED_GATE)]
    assert s.versions() == ("2", None)

    aliases.versions["champion"] = "4"  # the alias moves on: the new version is tried
    assert s.check()[CHAMPION] == SWAPPED
    assert s.fetch.calls == [f"models:/{NAME}/3", f"models:/{NAME}/4"]
    assert s.versions() == ("4", None)
    assert s.counted == [(CHAMPION, REFUSED_GATE), (CHAMPION, SWAPPED)]


def test_a_refused_version_is_tried_again_after_the_alias_went_back_and_returned() -> None:
    aliases = FakeAliases(champion="3")
    s = Setup(aliases)
    s.fetch.refuse["3"] = Refused(REFUSED_GATE, "refused")
    s.check()
    aliases.versions["champion"] = "2"  # rolled back to the one served
    assert s.check()[CHAMPION] == UNCHANGED
    aliases.versions["champion"] = "3"  # and moved to 3 again: a new attempt, counted again
    assert s.check()[CHAMPION] == REFUSED_GATE
    assert s.fetch.calls == [f"models:/{NAME}/3"] * 2
    assert s.counted == [(CHAMPION, REFUSED_GATE)] * 2


def test_a_version_that_does_not_build_is_refused_like_one_that_fails_its_gate() -> None:
    s = Setup(FakeAliases(champion="2", challenger="7"), challenger="5")
    s.build.refuse["7"] = Refused(REFUSED_LOAD, "the loaded model cannot score")
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: REFUSED_LOAD}
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: REFUSED_LOAD}
    assert s.versions() == ("2", "5")
    assert s.build.calls == [("7", CHALLENGER)]
    assert s.counted == [(CHALLENGER, REFUSED_LOAD)]


def test_a_registry_that_does_not_answer_is_counted_and_the_models_keep_serving() -> None:
    aliases = FakeAliases(champion="3", challenger="6")
    aliases.error = sqlite3.OperationalError("database is locked")
    s = Setup(aliases, challenger="5")
    before = s.slots.current
    assert s.check() == {CHAMPION: REGISTRY_ERROR, CHALLENGER: REGISTRY_ERROR}
    assert s.slots.current is before and s.fetch.calls == []
    assert s.counted == [(CHAMPION, REGISTRY_ERROR), (CHALLENGER, REGISTRY_ERROR)]
    s.check()  # every failed poll is counted: the counter's rate is the registry's outage
    assert s.counted == [(CHAMPION, REGISTRY_ERROR), (CHALLENGER, REGISTRY_ERROR)] * 2

    aliases.error = None  # back: the moved aliases are followed
    assert s.check() == {CHAMPION: SWAPPED, CHALLENGER: SWAPPED}
    assert s.versions() == ("3", "6")


def test_a_registry_error_while_fetching_is_retried_on_the_next_check() -> None:
    s = Setup(FakeAliases(champion="3"))
    s.fetch.refuse["3"] = Refused(REGISTRY_ERROR, "the registry cannot say what it is")
    assert s.check()[CHAMPION] == REGISTRY_ERROR
    del s.fetch.refuse["3"]  # the registry is back
    assert s.check()[CHAMPION] == SWAPPED
    assert s.versions() == ("3", None)


def test_a_removed_challenger_alias_removes_the_challenger() -> None:
    s = Setup(FakeAliases(champion="2"), challenger="5")
    before = s.slots.current
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: REMOVED}
    assert s.versions() == ("2", None)
    assert s.counted == [(CHALLENGER, REMOVED)]
    assert before.challenger is not None and before.challenger.info.version == "5"
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: UNCHANGED}  # removed once
    assert s.counted == [(CHALLENGER, REMOVED)] and s.fetch.calls == []


def test_a_missing_champion_alias_is_a_registry_error_and_the_champion_stays() -> None:
    s = Setup(FakeAliases(challenger="5"), challenger="5")
    before = s.slots.current
    assert s.check() == {CHAMPION: REGISTRY_ERROR, CHALLENGER: UNCHANGED}
    assert s.slots.current is before
    assert s.counted == [(CHAMPION, REGISTRY_ERROR)]
    assert s.fetch.calls == []
    # Still unset on the next polls: logged and counted once, not once a poll.
    assert s.check() == {CHAMPION: REGISTRY_ERROR, CHALLENGER: UNCHANGED}
    assert s.counted == [(CHAMPION, REGISTRY_ERROR)]


def test_fixed_versions_load_once_and_other_uris_are_not_followed() -> None:
    aliases = FakeAliases()
    s = Setup(aliases, targets={CHAMPION: "runs:/abc123/model", CHALLENGER: f"models:/{NAME}/9"})
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: SWAPPED}
    assert s.check() == {CHAMPION: UNCHANGED, CHALLENGER: UNCHANGED}
    assert aliases.asked == []  # neither URI names an alias
    assert s.fetch.calls == [f"models:/{NAME}/9"]
    assert s.versions() == ("2", "9")


def test_the_loop_checks_at_start_and_when_woken() -> None:
    aliases = FakeAliases(champion="2")
    s = Setup(aliases)

    async def run() -> None:
        task = asyncio.create_task(s.reloader.run())  # interval 0: only a wake checks again
        try:
            async with asyncio.timeout(5.0):
                while len(aliases.asked) < 2:  # the first check, at start
                    await asyncio.sleep(0.001)
                aliases.versions["champion"] = "3"
                s.reloader.wake()  # SIGHUP
                while s.counted != [(CHAMPION, SWAPPED)]:
                    await asyncio.sleep(0.001)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    assert s.versions() == ("3", None)
    assert len(aliases.asked) == 4


def test_the_alias_reader_reads_mlflows_sqlite_alias_table(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE registered_model_aliases (alias TEXT, version INTEGER, name TEXT)"
        )
        conn.execute("INSERT INTO registered_model_aliases VALUES ('champion', 3, ?)", (NAME,))
        conn.execute("INSERT INTO registered_model_aliases VALUES ('champion', 8, 'other')")
    conn.close()
    reader = AliasReader(f"sqlite:///{db}")
    assert asyncio.run(reader.version(NAME, "champion")) == "3"
    assert asyncio.run(reader.version(NAME, "challenger")) is None
    assert asyncio.run(reader.version("other", "champion")) == "8"


# --- ModelSlots ---------------------------------------------------------------------------

ROLE = MODEL_ROLE_HEADER.encode()


@pytest.mark.parametrize(
    ("headers", "with_challenger", "expected"),
    [
        ([], False, CHAMPION),
        ([], True, CHAMPION),
        ([(ROLE, b"challenger")], False, CHAMPION),  # none loaded: the champion answers
        ([(ROLE, b"challenger")], True, CHALLENGER),
        ([(b"content-type", b"application/json"), (ROLE, b"challenger")], True, CHALLENGER),
        ([(ROLE, b"champion")], True, CHAMPION),
        ([(ROLE, b"Challenger")], True, CHAMPION),
        ([(ROLE, b"")], True, CHAMPION),
        ([(b"x-other", b"challenger")], True, CHAMPION),
    ],
)
def test_for_headers_picks_the_challenger_only_when_asked_and_loaded(
    headers: list[tuple[bytes, bytes]], with_challenger: bool, expected: str
) -> None:
    slots = ModelSlots(served("2"))
    if with_challenger:
        slots.swap(served("5", CHALLENGER), CHALLENGER)
    model = slots.for_headers(headers)
    assert model.role == expected
    assert model.info.version == ("5" if expected == CHALLENGER else "2")
    assert model.headers == [
        (MODEL_VERSION_HEADER.encode(), model.info.version.encode()),
        (ROLE, expected.encode()),
    ]


def test_a_swap_replaces_the_whole_set_and_leaves_what_was_read_unchanged() -> None:
    old_champion, challenger = served("2"), served("5", CHALLENGER)
    slots = ModelSlots(old_champion)
    slots.swap(challenger, CHALLENGER)
    before = slots.current

    new_champion = served("3")
    slots.swap(new_champion, CHAMPION)
    assert slots.current is not before
    assert before.champion is old_champion and before.challenger is challenger
    assert slots.champion is new_champion and slots.current.challenger is challenger
    assert before.by_version("2") is old_champion and before.by_version("3") is None
    assert slots.current.by_version("3") is new_champion

    during = slots.current
    slots.swap(None, CHALLENGER)
    assert during.challenger is challenger and during.models() == [new_champion, challenger]
    assert slots.current.challenger is None and slots.current.models() == [new_champion]
    assert slots.for_headers([(ROLE, b"challenger")]) is new_champion
    with pytest.raises(AssertionError, match="never removed"):
        slots.swap(None, CHAMPION)
    assert slots.champion is new_champion


def test_a_served_model_precomputes_its_labels() -> None:
    model = served("5", CHALLENGER)
    assert model.rows == {"model_version": "5", "role": CHALLENGER}
    assert model.ok == {"outcome": "ok", "model_version": "5", "role": CHALLENGER}
    assert model.error == {"outcome": "error", "model_version": "5", "role": CHALLENGER}
    assert model.labels() == {
        "model_name": NAME,
        "model_version": "5",
        "run_id": "run-5",
        "runtime": "onnx",
        "role": CHALLENGER,
    }
    assert model.describe()["role"] == CHALLENGER and model.describe()["version"] == "5"
