"""Errors a user can fix: one clear line (what, where, what to do); the CLI exits 2."""


class TransferlabError(Exception):
    """A mistake in the user's input or setup, shown as one line without a traceback."""


class ConfigError(TransferlabError):
    """A bad config key or value."""


class DataError(TransferlabError):
    """A data source that cannot be used as given."""


class DivergedError(TransferlabError):
    """Training whose loss stopped being a finite number: the run is marked failed."""


class RunError(TransferlabError):
    """A run directory that cannot be used as asked."""
