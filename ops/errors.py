"""Errors a person caused (bad flag, bad path, bad name): printed as one line, exit 2. No I/O."""


class UserError(Exception):
    """A mistake in the input. `str(err)` names the bad value and the fix, on one line."""

    exit_code = 2
