from .build import BuildSummary, build_index
from .embedding import ClaspEmbedder, EmbeddedChunk, window_bounds
from .index import AudioEntry, ClaspIndex, model_identity, read_entries
from .search import ClaspSearch

__all__ = [
    "AudioEntry",
    "BuildSummary",
    "ClaspEmbedder",
    "ClaspIndex",
    "ClaspSearch",
    "EmbeddedChunk",
    "build_index",
    "model_identity",
    "read_entries",
    "window_bounds",
]
