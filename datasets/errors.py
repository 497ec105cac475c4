"""One exception type for bad data input, and the CLI wrapper that turns it into one line + exit 2."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence

# errno -> what to do, for OS errors writing our outputs (frames, LMDB, checkpoints): fatal for the run and named,
# never reported as a corrupt video. LMDB reports a short write (a disk filling up under it) as EIO.
DISK_ERRORS = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
               errno.EROFS: "write --out on a writable file system", errno.EACCES: "fix the permissions of --out",
               errno.EPERM: "fix the permissions of --out",
               errno.EIO: "check that the disk has free space and is healthy"}


class DataError(Exception):
    """Bad data input (wrong path, damaged record, unknown class, ...).

    The message is one line naming the file/key/video and what to do; CLIs print it without a traceback.
    """


def disk_errno(exc: BaseException) -> int | None:
    """The DISK_ERRORS errno behind `exc`: an OSError's errno, or one named in the message of a library's error
    (py-lmdb raises lmdb.Error("mdb_txn_commit: No space left on device") without an errno)."""
    code = getattr(exc, "errno", None)
    if code in DISK_ERRORS:
        return code
    text = str(exc)
    return next((c for c in DISK_ERRORS if os.strerror(c) in text), None)


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
