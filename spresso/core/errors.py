"""User-facing errors: one clear line, never a traceback (the CLI prints ``error: <message>``)."""


class SpressoError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class ConfigError(SpressoError):
    """A configuration file or override is invalid."""


class CheckpointError(SpressoError):
    """A checkpoint that is missing, incomplete, or does not match the model."""


class BundleError(SpressoError):
    """A codec bundle that is missing, damaged, or from an incompatible format version."""
