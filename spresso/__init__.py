"""spresso: S-PRESSO ultra-low-bitrate sound-effect compression, and the workflow that trains it."""
__version__ = "0.1.0"

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def load(path_or_uri, *, tracking_uri=None, **kw):
    """``spresso.load(bundle folder | "s3://bucket/…/bundles/d96" | "models:/NAME@alias" | "runs:/ID/bundle") -> Codec``.

    A ``models:/`` or ``runs:/`` URI is looked up in ``tracking_uri``, else MLFLOW_TRACKING_URI, else the
    demo's store (``work/demo/mlflow.db`` under the current folder); a missing store is an error, never
    created. Imported on first call, so ``import spresso`` stays light (no torch, no MLflow).
    """
    # lazy: torch only when a codec is loaded
    from spresso.codec.codec import load as load_codec

    where = str(path_or_uri)
    if where.startswith(MLFLOW_SCHEMES):
        # lazy: MLflow only for registry URIs
        from spresso.runtime.tracking import download_bundle

        where = download_bundle(where, tracking_uri=tracking_uri)
    return load_codec(where, **kw)
