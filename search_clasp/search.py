"""Searching an index with text (any language the sentence encoder knows) or with an audio example.

The index remembers which model embedded it; a query must be embedded by the same model, or
scores compare vectors from two unrelated spaces. So the model is checked against the stored
identity before it is loaded, and a different one is refused.
"""

import time

import torch

from data_clasp.audio import load_audio

from .index import ClaspIndex, model_identity

AUDIO_BACKBONES = ("speech_model.", "spectrogram_model.")


def load_text_model(model_dir):
    """A saved ClaspModel without its audio backbones: `get_text_features` only.

    The model's layout is built on the meta device (no memory, no initialisation); the sentence
    encoder is built for real but not initialised (transformers' `no_init_weights`), so that its
    non-persistent buffers (position ids) exist; then every weight but the speech and spectrogram
    backbones' is read with safetensors' `safe_open` and assigned. `speech_model` and
    `spectrogram_model` are None. ValueError naming the folder if the weights do not fit its config.
    """
    from safetensors import safe_open
    from transformers.initialization import no_init_weights

    from backbones_clasp.checkpoints import weight_files
    from configuration_clasp import ClaspConfig
    from modeling_clasp import ClaspModel
    from modeling_clasp.modeling_clasp import build_text_encoder

    config = ClaspConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = ClaspModel(config)
    with no_init_weights():
        model.text_model = build_text_encoder(config)
    model.speech_model = model.spectrogram_model = None
    weights = {}
    paths = weight_files(model_dir)
    try:
        for path in paths:
            with safe_open(path, framework="pt") as f:
                weights.update({name: f.get_tensor(name) for name in f.keys() if not name.startswith(AUDIO_BACKBONES)})
        model.load_state_dict(weights, strict=True, assign=True)  # every name and shape, or an error naming them
    except Exception as error:  # SafetensorError (a damaged file), RuntimeError (weights of another config)
        raise ValueError(f"{model_dir}: the weights cannot be loaded for its config.json ({error})") from None
    return model.eval()


class ClaspSearch:
    """An index and the model that built it: `text(query)`, `audio(path)`, `classify(path, labels)`.

    `text_only=True`: only the sentence encoder is loaded (see `load_text_model`); `audio` and
    `classify` then raise ValueError.
    """

    def __init__(self, index_dir, model_dir=None, device=None, text_only=False):
        from .embedding import ClaspEmbedder

        self.index = ClaspIndex(index_dir)
        self.model_dir = model_dir or self.index.info["model_path"]
        self.index.check_model(model_identity(self.model_dir), self.model_dir)
        self.index.faiss  # a missing index.faiss is reported now, not at the first query
        settings = dict(window_s=self.index.info["window_s"], hop_s=self.index.info["hop_s"], device=device)
        if text_only:
            from processing_clasp import ClaspProcessor

            processor = ClaspProcessor.from_pretrained(self.model_dir, trust_remote_code=False)
            self.embedder = ClaspEmbedder(load_text_model(self.model_dir), processor, **settings)
        else:
            self.embedder = ClaspEmbedder.from_pretrained(self.model_dir, **settings)
        self.text_only = text_only
        self.last_timing = {}

    def _load_audio(self, path):
        if self.text_only:
            raise ValueError(f"{path}: this search was opened for text queries only (text_only=True)")
        return load_audio(path)

    def _search(self, embed, k, nprobe, ef, hubness="none") -> list[dict]:
        started = time.perf_counter()
        query = embed()
        embedded = time.perf_counter()
        hits = self.index.search(query.numpy()[None], k=k, nprobe=nprobe, ef=ef, hubness=hubness)[0]
        self.last_timing = {"embed_s": embedded - started, "search_s": time.perf_counter() - embedded}
        return hits

    def text(self, query: str, k=10, nprobe=None, ef=None, hubness="none") -> list[dict]:
        """The k files that best match `query`; hubness="csls": re-ranked by CSLS (see ClaspIndex.search)."""
        if not query.strip():
            raise ValueError("the query is empty")
        return self._search(lambda: self.embedder.embed_texts([query])[0], k, nprobe, ef, hubness)

    def audio(self, path, k=10, nprobe=None, ef=None) -> list[dict]:
        """Query by example: files that sound like they say what `path` says."""
        samples, rate = self._load_audio(path)
        return self._search(lambda: self.embedder.embed_audio(samples, rate, name=str(path)), k, nprobe, ef)

    def classify(self, path, labels: list[str]) -> dict[str, float]:
        """Zero-shot classification: a softmax over the model's scaled cosine with each label's text."""
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise ValueError("give at least one label")
        samples, rate = self._load_audio(path)
        audio = self.embedder.embed_audio(samples, rate, name=str(path))
        with torch.inference_mode():
            scale = self.embedder.model.logit_scale_value().cpu()
            probabilities = (scale * self.embedder.embed_texts(labels) @ audio).softmax(dim=0)
        return dict(zip(labels, probabilities.tolist()))


__all__ = ["ClaspSearch", "load_text_model"]
