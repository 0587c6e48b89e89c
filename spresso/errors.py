"""User-facing errors: one clear line, never a traceback (the CLI prints ``error: <message>``)."""


class SpressoError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class ConfigError(SpressoError):
    """A configuration file or override is invalid."""
