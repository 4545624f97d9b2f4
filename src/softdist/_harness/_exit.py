"""The end of a CLI command (check, demo): shared, so that the commands need not import each other."""

from __future__ import annotations

import sys


def finish(skipped: list[str], failure: str) -> int:
    """The skip lines, then the exit status: 1 with ``failure`` on stderr when something disagreed."""
    for reason in skipped:
        print(f"skipped {reason}")
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0
