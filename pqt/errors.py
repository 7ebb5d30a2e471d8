"""The one exception type the CLI turns into a single clear line (no traceback)."""


class UserError(Exception):
    """Bad input or an unrecoverable run condition, explained for the user.

    The message must name the problem and the fix in one line; the CLI prints
    ``pqt: error: <message>`` and exits with status 2.
    """
