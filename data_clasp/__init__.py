"""Data: corpora, dataset loaders, speech synthesis, the feature cache, audio decoding, whole-file writes.

Names are imported on first use (PEP 562, as transformers' own `__init__` does): `clasp search`
decodes audio with `data_clasp.audio` and must not pay for importing `datasets` at start.
"""

import importlib

_SOURCES = {
    "Sentence": "corpora", "language_counts": "corpora", "load_sentences": "corpora",
    "load_hf": "loaders", "load_manifest": "loaders", "load_speechbrown": "loaders",
    "FEATURES": "schema", "SAMPLING_RATE": "schema", "SPLITS": "schema", "translations_dict": "schema",
    "synthesize": "synth",
    "build_feature_cache": "features",
    "build_asterisk": "asterisk",
    "AudioFileError": "audio", "find_audio_files": "audio", "load_audio": "audio",
    "write_atomically": "files",
}
__all__ = list(_SOURCES)


def __getattr__(name):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
