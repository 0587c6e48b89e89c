"""spresso: S-PRESSO ultra-low-bitrate sound-effect compression, and the workflow that trains it."""
__version__ = "0.1.0"


def load(path_or_uri, **kw):
    """``spresso.load(bundle folder | "models:/NAME@alias" | "runs:/ID/bundle") -> Codec``.

    Imported on first call, so ``import spresso`` stays light (no torch).
    """
    from .codec.codec import load as _load

    return _load(path_or_uri, **kw)
