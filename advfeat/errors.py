"""The one exception type for bad input.

Anything the user can fix (a missing file, an unknown model name, eps < 0) raises
UserError with a one-line message; the CLI prints it and exits with status 2.
"""


class UserError(Exception):
    """Bad input: the CLI prints `advfeat: error: <message>` and exits 2."""
