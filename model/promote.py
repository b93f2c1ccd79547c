"""Makes a registered version the champion: the challenger's, or the one named.

    python -m model.promote [--version N] [--keep-challenger] [--name lungwatch-risk]

Tracking store: MLFLOW_TRACKING_URI (default: sqlite file `mlruns.db` at the repo root).
@champion moves to @challenger's version (or N), @previous-champion to the champion it
replaces, and @challenger is removed when it points at the new champion (--keep-challenger:
kept). Refused (status 2, one line on stderr, no alias moved): no such model or version, no
@challenger without --version, a version whose run is not tagged gate=passed or whose model
has no `onnx` artifact. Already champion: "nothing to do", status 0. Prints one JSON line:
{"champion", "previous_champion", "challenger", "changed", "name"}.
"""

from __future__ import annotations

import argparse
import sys

from model import aliases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--version",
        type=aliases.version_argument,
        help=f"the version to promote (default: @{aliases.CHALLENGER_ALIAS}'s)",
    )
    parser.add_argument(
        "--keep-challenger",
        action="store_true",
        help=f"leave @{aliases.CHALLENGER_ALIAS} on the promoted version",
    )
    parser.add_argument("--name", default=aliases.DEFAULT_NAME, help="the registered model")
    args = parser.parse_args(argv)
    return aliases.run_cli(
        "promote", lambda: aliases.promote(args.name, args.version, args.keep_challenger)
    )


if __name__ == "__main__":
    sys.exit(main())
