"""One exception type for bad data input, and the CLI wrapper that turns it into one line + exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


class DataError(Exception):
    """Bad data input (wrong path, damaged record, unknown class, ...).

    The message is one line naming the file/key/video and what to do; CLIs print it without a traceback.
    """


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI ``main``; a DataError becomes ``error: <message>`` on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Everything the CLIs write is resumable, so an interrupt is not an error worth a traceback.
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
