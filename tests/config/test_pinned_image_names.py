"""What the pinned image names (tags) in compose.yaml imply for the files that depend on them.

The images cannot run here; these are facts read from the pinned versions, kept next to
the pins so that bumping a tag fails a test instead of a container.
"""

from __future__ import annotations

import re

from tests.config import stack_files

SERVICES = stack_files.compose()["services"]


def _version(image: str) -> tuple[int, ...]:
    tag = image.rsplit(":", 1)[1].removeprefix("v")
    return tuple(int(part) for part in tag.split("."))


def test_tempo_healthcheck_uses_a_binary_the_pinned_image_has() -> None:
    """grafana/tempo images up to 2.8.x are distroless "debug" images with busybox under
    /busybox; grafana/tempo#5717 removed busybox (the 2.9.3 image has no /busybox/wget) and
    Tempo has no healthcheck command of its own (grafana/tempo#6536). An upgrade past 2.8
    must replace this probe (an image with a probe binary added, or a probe from outside)."""
    tempo = SERVICES["tempo"]
    probe = tempo["healthcheck"]["test"]
    version = _version(tempo["image"])
    if any(str(arg).startswith("/busybox/") for arg in probe):
        assert version < (2, 9), (
            f"grafana/tempo:{'.'.join(map(str, version))} has no /busybox: the healthcheck "
            f"{probe} cannot run in it"
        )


def test_alertmanager_version_named_in_comments_is_the_pinned_one() -> None:
    pinned = SERVICES["alertmanager"]["image"].rsplit(":", 1)[1].removeprefix("v")
    for path in sorted(stack_files.ALERTMANAGER_DIR.iterdir()):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#") and "lertmanager" in line:
                for named in re.findall(r"\bv?(\d+\.\d+(?:\.\d+)?)\b", line):
                    assert pinned.startswith(named), f"{path.name}: {line.strip()!r} vs {pinned}"
