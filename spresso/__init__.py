"""spresso: S-PRESSO ultra-low-bitrate sound-effect compression, and the workflow that trains it."""
__version__ = "0.1.0"

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load(path_or_uri, **kw):
    """``spresso.load(bundle folder | "s3://bucket/…/bundles/d96" | "models:/NAME@alias" | "runs:/ID/bundle") -> Codec``.

    Imported on first call, so ``import spresso`` stays light (no torch, no MLflow).
    """
    # lazy: torch only when a codec is loaded
    from spresso.codec.codec import load as load_codec

    where = str(path_or_uri)
    if where.startswith(MLFLOW_SCHEMES):
        # lazy: MLflow only for registry URIs
        from spresso.runtime.tracking import download_bundle

        where = download_bundle(where)
    return load_codec(where, **kw)
