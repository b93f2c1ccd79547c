"""The `model_version` label values the gateway writes: a few registry versions, never more.

Versions reach the gateway from the model server's `x-model-version` header and from signed
prediction ids; either could in principle carry anything. A label value is the version when
it is a registry version (digits) among the first MAX_VERSIONS seen by this process,
`other` beyond them, `unknown` for anything else, so no answer can add series without bound.
"""

from __future__ import annotations

# A process sees the versions served during its life: a champion, a challenger, and those
# that replace them until the next deploy. Eight leaves room for several rollouts.
MAX_VERSIONS = 8
UNKNOWN = "unknown"
OTHER = "other"

_seen: dict[str, str] = {}


def version_label(version: str | None) -> str:
    """The label value for `version` (per process, like the SDK's series it bounds)."""
    if version is None:
        return UNKNOWN
    label = _seen.get(version)
    if label is not None:
        return label
    if not (version.isascii() and version.isdigit() and len(version) <= 6):
        return UNKNOWN
    if len(_seen) >= MAX_VERSIONS:
        return OTHER
    _seen[version] = version
    return version
