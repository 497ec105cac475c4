"""Errors caused by the user's input: the CLI prints their one-line message and exits 2, no traceback."""


class UserError(Exception):
    """Bad input that the user can fix; the message names the file or key and what to do."""


class ProfileError(UserError):
    """A prune profile that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used."""
