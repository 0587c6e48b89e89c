"""Audio decoding, resampling and procedural sound-effect synthesis."""
from spresso.audio.io import (
    AUDIO_EXTENSIONS,
    AudioError,
    load_mono,
    read_audio,
    resample,
    to_mono,
    write_audio,
)

__all__ = ["AUDIO_EXTENSIONS", "AudioError", "load_mono", "read_audio", "resample", "to_mono", "write_audio"]
