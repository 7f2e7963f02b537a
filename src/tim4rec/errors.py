"""User-facing errors.

Anything the user can fix (a bad file, an unknown key, a missing column) is raised as a
:class:`Tim4RecError`. The command line prints its message on one line and exits with status 2,
without a traceback; the Python API lets it propagate.
"""


class Tim4RecError(Exception):
    """An error caused by the user's input; its message names the file, line or field."""


class DataError(Tim4RecError):
    """A data file or dataset could not be read or is unusable."""


class ConfigError(Tim4RecError):
    """A configuration key or value is unknown or invalid."""
