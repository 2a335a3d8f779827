"""The base of every error that is the user's to fix (a bad option, file, config or folder).

Each module's own error class (ConfigError, StreamError, DataFormatError, ResultError,
GridError, ...) also derives from `CurbError`, so the CLI and the grid's preflight catch one
class, printed as one line without a traceback, and this module imports nothing: every other
module may import it without creating an import cycle.
"""

from __future__ import annotations


class CurbError(Exception):
    """An error the user can fix; its message says what is wrong and where."""


USER_ERRORS: tuple[type[BaseException], ...] = (CurbError,)
