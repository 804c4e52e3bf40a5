"""A CLASP model's embeddings of speech–text pairs: audio, texts and their translations.

Everything runs in length-sorted batches (longest first), and the results are put back in the
pairs' order: clips of similar length share a batch, so little of each batch is padding, and a
batch too large for memory fails at the start of a run rather than hours into it.
"""

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from evaluation.pairs import prepared_clip


def length_batches(lengths, batch_size: int) -> list[np.ndarray]:
    """Indices in batches of `batch_size`, longest first."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def embed_texts(model, processor, texts, batch_size: int, desc: str = "texts") -> torch.Tensor:
    """[N, D] text embeddings; `processor.tokenize` adds the sentence encoder's prompt."""
    embeds = torch.empty(len(texts), model.config.projection_dim)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not texts) as bar:
        for batch in length_batches([len(t) for t in texts], batch_size):
            tokens = processor.tokenize([texts[i] for i in batch]).to(model.device)
            embeds[batch] = model.get_text_features(
                tokens["input_ids"], tokens.get("attention_mask"), tokens.get("token_type_ids")
            ).pooler_output.cpu()
            bar.update(len(batch))
    return embeds


@torch.no_grad()
def embed_audio(model, processor, pairs, lengths, batch_size: int) -> tuple[torch.Tensor, float]:
    """[N, D] audio embeddings of the pairs' clips, and the seconds spent encoding them.

    The encoding time starts from the 16 kHz waveform in memory (features + model), leaving out
    reading the file, so it compares with the ASR baseline's transcription time.
    """
    feature_extractor = processor.feature_extractor
    embeds = torch.empty(len(pairs), model.config.projection_dim)
    encode_s = 0.0
    with tqdm(total=len(pairs), desc="audio", unit="clip") as bar:
        for batch in length_batches(lengths, batch_size):
            waveforms = [prepared_clip(pairs[i], feature_extractor) for i in batch]
            started = time.perf_counter()
            inputs = feature_extractor(waveforms, sampling_rate=feature_extractor.sampling_rate).to(model.device)
            embeds[batch] = model.get_audio_features(**inputs).pooler_output.cpu()  # .cpu() waits for the GPU
            encode_s += time.perf_counter() - started
            bar.update(len(batch))
    return embeds, encode_s


def embed_pairs(model, processor, pairs, lengths, batch_size: int) -> dict:
    """audio_embeds, text_embeds, cross_lingual ({language: (embeds, rows)}) and timings.

    Every language that any pair has a translation into becomes a set of text queries, each
    pointing at the pair whose text it translates.
    """
    started = time.perf_counter()
    audio_embeds, audio_encode_s = embed_audio(model, processor, pairs, lengths, batch_size)
    text_embeds = embed_texts(model, processor, [p["text"] for p in pairs], batch_size)
    cross_lingual = {}
    for language in sorted({code for p in pairs for code in p["translations"]}):
        rows = [i for i, p in enumerate(pairs) if language in p["translations"]]
        queries = [pairs[i]["translations"][language] for i in rows]
        cross_lingual[language] = (embed_texts(model, processor, queries, batch_size, desc=f"texts ({language})"), rows)
    return {
        "audio_embeds": audio_embeds,
        "text_embeds": text_embeds,
        "cross_lingual": cross_lingual,
        "embed_s": time.perf_counter() - started,
        "audio_embed_s_per_clip": audio_encode_s / len(pairs),
    }
