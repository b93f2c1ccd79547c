"""The models this server answers with right now: a champion, maybe a challenger, swapped whole.

A request reads `ModelSlots.current` once and uses what it got to the end: a swap replaces
that one reference (atomic under the GIL), so an answer is never computed by one version and
stamped with another, and a request that started before a swap finishes on the version it
started on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from contract.wire import CHALLENGER, CHAMPION, MODEL_ROLE_HEADER, MODEL_VERSION_HEADER
from model.candidate import ModelInfo

_ROLE_HEADER = MODEL_ROLE_HEADER.encode()
_CHALLENGER = CHALLENGER.encode()


@dataclass(frozen=True)
class ServedModel:
    """One loaded version in one role, with what every call stamps and counts precomputed:
    the SDK would otherwise hash a new attribute dict on every record."""

    role: str
    info: ModelInfo
    pyfunc: Any  # the MLflow pyfunc (for /invocations)
    risk_model: Any  # its model.pyfunc.RiskModel (for the lean path)
    reference: dict[str, Any] | None
    headers: list[tuple[bytes, bytes]] = field(init=False)
    ok: dict[str, str] = field(init=False)
    error: dict[str, str] = field(init=False)
    rows: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        version = self.info.version
        set_ = object.__setattr__  # frozen: these are derived once, here
        set_(self, "headers", [(MODEL_VERSION_HEADER.encode(), version.encode()),
                               (_ROLE_HEADER, self.role.encode())])  # fmt: skip
        set_(self, "rows", {"model_version": version, "role": self.role})
        set_(self, "ok", {"outcome": "ok", **self.rows})
        set_(self, "error", {"outcome": "error", **self.rows})

    def describe(self) -> dict[str, str]:
        return {**asdict(self.info), "role": self.role}

    def labels(self) -> dict[str, str]:
        """model_info's labels."""
        info = self.info
        return {
            "model_name": info.name,
            "model_version": info.version,
            "run_id": info.run_id,
            "runtime": info.runtime,
            "role": self.role,
        }


@dataclass(frozen=True)
class Served:
    champion: ServedModel
    challenger: ServedModel | None = None

    def role(self, role: str) -> ServedModel | None:
        return self.champion if role == CHAMPION else self.challenger

    def models(self) -> list[ServedModel]:
        return [self.champion] if self.challenger is None else [self.champion, self.challenger]

    def by_version(self, version: str) -> ServedModel | None:
        return next((m for m in self.models() if m.info.version == version), None)


class ModelSlots:
    def __init__(self, champion: ServedModel) -> None:
        self.current = Served(champion)

    @property
    def champion(self) -> ServedModel:
        return self.current.champion

    def for_headers(self, headers: list[tuple[bytes, bytes]]) -> ServedModel:
        """The model a lean-path call asks for: the challenger when its role header says so
        and one is loaded, else the champion (the response's role header says which)."""
        served = self.current
        if served.challenger is not None:
            for name, value in headers:
                if name == _ROLE_HEADER:
                    if value == _CHALLENGER:
                        return served.challenger
                    break
        return served.champion

    def swap(self, model: ServedModel | None, role: str) -> None:
        """Put `model` in `role` (None: no challenger any more), in one assignment."""
        if role == CHAMPION:
            assert model is not None, "the champion is replaced, never removed"
            self.current = replace(self.current, champion=model)
        else:
            self.current = replace(self.current, challenger=model)
