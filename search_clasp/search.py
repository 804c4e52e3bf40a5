"""Searching an index with text (any language the sentence encoder knows) or with an audio example.

The index remembers which model embedded it; a query must be embedded by the same model, or
scores compare vectors from two unrelated spaces. So the model is checked against the stored
identity before it is loaded, and a different one is refused.
"""

import time

import torch

from clasp_cli.audio_files import load_audio

from .index import ClaspIndex, model_identity


class ClaspSearch:
    """An index and the model that built it: `text(query)`, `audio(path)`, `classify(path, labels)`."""

    def __init__(self, index_dir, model_dir=None, device=None):
        from .embedding import ClaspEmbedder

        self.index = ClaspIndex(index_dir)
        self.model_dir = model_dir or self.index.info["model_path"]
        self.index.check_model(model_identity(self.model_dir), self.model_dir)
        self.index.faiss  # a missing index.faiss is reported now, not at the first query
        self.embedder = ClaspEmbedder.from_pretrained(
            self.model_dir, window_s=self.index.info["window_s"], hop_s=self.index.info["hop_s"], device=device
        )
        self.last_timing = {}

    def _search(self, embed, k, nprobe, ef) -> list[dict]:
        started = time.perf_counter()
        query = embed()
        embedded = time.perf_counter()
        hits = self.index.search(query.numpy()[None], k=k, nprobe=nprobe, ef=ef)[0]
        self.last_timing = {"embed_s": embedded - started, "search_s": time.perf_counter() - embedded}
        return hits

    def text(self, query: str, k=10, nprobe=None, ef=None) -> list[dict]:
        if not query.strip():
            raise ValueError("the query is empty")
        return self._search(lambda: self.embedder.embed_texts([query])[0], k, nprobe, ef)

    def audio(self, path, k=10, nprobe=None, ef=None) -> list[dict]:
        """Query by example: files that sound like they say what `path` says."""
        samples, rate = load_audio(path)
        return self._search(lambda: self.embedder.embed_audio(samples, rate, name=str(path)), k, nprobe, ef)

    def classify(self, path, labels: list[str]) -> dict[str, float]:
        """Zero-shot classification: a softmax over the model's scaled cosine with each label's text."""
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise ValueError("give at least one label")
        samples, rate = load_audio(path)
        audio = self.embedder.embed_audio(samples, rate, name=str(path))
        with torch.inference_mode():
            scale = self.embedder.model.logit_scale_value().cpu()
            probabilities = (scale * self.embedder.embed_texts(labels) @ audio).softmax(dim=0)
        return dict(zip(labels, probabilities.tolist()))


__all__ = ["ClaspSearch"]
