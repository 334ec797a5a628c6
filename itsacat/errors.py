"""Errors the command reports as one clear line instead of a traceback."""


class UserError(Exception):
    """Something the user can fix; printed as `itsacat: error: <message>`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
