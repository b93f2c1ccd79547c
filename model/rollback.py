"""Moves the champion back to the version it replaced.

    python -m model.rollback [--name lungwatch-risk]

Tracking store: MLFLOW_TRACKING_URI (default: sqlite file `mlruns.db` at the repo root).
@champion moves to @previous-champion's version and @previous-champion to the version rolled
back from, so a second rollback undoes the first; @challenger stays. Refused (status 2, one
line on stderr, no alias moved): no such model, no @previous-champion, or a version that fails
the checks promote makes. Prints one JSON line like promote's.
"""

from __future__ import annotations

import argparse
import sys

from model import aliases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default=aliases.DEFAULT_NAME, help="the registered model")
    args = parser.parse_args(argv)
    return aliases.run_cli("rollback", lambda: aliases.rollback(args.name))


if __name__ == "__main__":
    sys.exit(main())
