"""The ground floor: what every other layer may use, and which uses nothing above it.

- :mod:`~spresso.core.errors`: the one-line error types;
- :mod:`~spresso.core.storage`: paths that may be local folders or fsspec URLs (``s3://``, ``memory://``);
- :mod:`~spresso.core.digest`: content digests of files, trees and JSON;
- :mod:`~spresso.core.checkpoint`: checkpoint folders (safetensors + JSON, never pickles);
- :mod:`~spresso.core.bundle_io`: the codec bundle's manifest and weight files;
- :mod:`~spresso.core.rates`: the operating-point type, frame rates and bitrates.
"""
