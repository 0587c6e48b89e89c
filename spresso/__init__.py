"""spresso: S-PRESSO ultra-low-bitrate sound-effect compression, and the workflow that trains it."""
__version__ = "0.1.0"
