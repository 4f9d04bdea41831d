"""User-facing errors: one line that says what is wrong and what to do, exit code 2."""


class OpdError(Exception):
    """Bad input or a state the user can fix. The CLI prints ``str(err)`` on one line and exits with code 2."""
