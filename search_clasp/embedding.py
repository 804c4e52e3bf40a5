"""Audio files and texts → CLASP embeddings, batched, with long audio embedded by windows.

Batches are length-sorted: padding to the longest clip of a batch is wasted compute, so windows
of similar length go together (within a chunk of files, which bounds memory).

Long audio is never truncated. A clip longer than the window (default 30 s, less if the speech
encoder is limited: Whisper sees at most 30 s; HuBERT-like encoders have no limit but attention
costs grow with the square of the length) is cut into overlapping windows (default every 25 s),
each window is embedded like a short clip, and the clip's embedding is the duration-weighted
mean of its window embeddings, re-normalised:
  * the mean: cos(query, mean) is the average of the windows' cosines, so a recording scores by
    how well the query matches it on average, over its whole length;
  * weighted by duration: the last window is usually a short remainder; a 3 s tail carries less
    speech and a noisier embedding than a 30 s window, and should count for 3 s, not for a whole
    window, so that every second counts about equally (up to the overlaps);
  * re-normalised: a mean of unit vectors is shorter than 1 (the more its windows differ, the
    shorter), and the index compares by inner product, which is the cosine only for unit
    vectors: without it a long, varied recording would score below a short one for the same match.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchaudio

from data_clasp.audio import AudioFileError, load_audio
from processing_clasp.feature_extraction_clasp import to_float_mono


@dataclass
class EmbeddedChunk:
    """What one chunk of files gave: rows for the files that worked, reasons for those that did not."""

    paths: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  # [len(paths), projection_dim], L2-normalised
    failed: list[dict] = field(default_factory=list)  # {"path", "reason"}


def window_bounds(n_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering the whole clip: full windows every `hop`, then the remainder."""
    bounds, start = [], 0
    while start + window < n_samples:
        bounds.append((start, start + window))
        start += hop
    bounds.append((start, n_samples))
    return bounds


class ClaspEmbedder:
    """A CLASP model and its processor, embedding audio (files or arrays) and texts for search."""

    def __init__(self, model, processor, batch_size=16, window_s=30.0, hop_s=25.0, device=None):
        if not 0 < hop_s <= window_s:
            raise ValueError(f"need 0 < hop ({hop_s} s) <= window ({window_s} s) so that windows cover the whole clip")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.feature_extractor = processor.feature_extractor
        self.rate = self.feature_extractor.sampling_rate
        self.batch_size = batch_size
        self.window = int(window_s * self.rate)
        self.hop = int(hop_s * self.rate)
        max_samples = self.feature_extractor.max_samples
        if max_samples is not None and max_samples < self.window:
            # The encoder cannot take the window asked for: shrink it, keeping the same overlap ratio.
            self.hop = max(1, int(self.hop * max_samples / self.window))
            self.window = max_samples

    @classmethod
    def from_pretrained(cls, model_dir, quantize=None, **kwargs):
        """`quantize="int8"`: int8 encoders on the CPU (search_clasp.quantization.quantize_model)."""
        from backbones_clasp.checkpoints import load_model_and_processor

        from .quantization import check_quantize, quantize_model

        if quantize is not None:
            kwargs["device"] = kwargs.get("device") or "cpu"
            check_quantize(quantize, kwargs["device"])  # before the model loads
        # Checked first: weights that do not fit the folder's config are refused, naming the difference.
        model, processor = load_model_and_processor(os.fspath(model_dir))
        return cls(quantize_model(model, quantize, kwargs.get("device")), processor, **kwargs)

    def waveform(self, samples, rate: int, name: str = "audio") -> torch.Tensor:
        """One clip (1-D, or 2-D `(channels, samples)` as `load_audio` returns it; any sample type and
        rate) as mono float32 at the model's rate; ValueError if unusable."""
        waveform = to_float_mono(samples, name)
        if rate != self.rate:
            waveform = torchaudio.functional.resample(waveform, rate, self.rate)
        return waveform

    @torch.inference_mode()
    def embed_waveforms(self, waveforms: list[torch.Tensor]) -> torch.Tensor:
        """`[len(waveforms), projection_dim]` for mono clips at the model's rate, any length."""
        windows, owners, weights = [], [], []
        for clip, waveform in enumerate(waveforms):
            for start, end in window_bounds(waveform.shape[0], self.window, self.hop):
                windows.append(waveform[start:end])
                owners.append(clip)
                weights.append(float(end - start))
        by_length = sorted(range(len(windows)), key=lambda i: windows[i].shape[0])
        window_embeds = [None] * len(windows)
        for first in range(0, len(by_length), self.batch_size):
            batch = by_length[first : first + self.batch_size]
            inputs = self.feature_extractor([windows[i] for i in batch], sampling_rate=self.rate).to(self.device)
            embeds = self.model.get_audio_features(**inputs).pooler_output.cpu()
            for i, embed in zip(batch, embeds):
                window_embeds[i] = embed
        sums = torch.zeros(len(waveforms), window_embeds[0].shape[-1])
        sums.index_add_(0, torch.tensor(owners), torch.stack(window_embeds) * torch.tensor(weights)[:, None])
        return F.normalize(sums, dim=-1)

    def embed_audio(self, samples, rate: int, name: str = "audio") -> torch.Tensor:
        """`[projection_dim]` for one clip as an array or tensor; `name` is how an unusable clip is reported."""
        return self.embed_waveforms([self.waveform(samples, rate, name)])[0]

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """`[len(texts), projection_dim]`: the sentence encoder's embeddings (with the model's text prefix)."""
        tokens = self.processor.tokenize(texts)
        return self.model.get_text_features(**tokens.to(self.device)).pooler_output.cpu()

    def embed_files(self, paths, files_per_chunk=64, max_chunk_seconds=1800.0, strict=False, progress=None):
        """Yield an `EmbeddedChunk` for each run of consecutive files, in order.

        A chunk closes after `files_per_chunk` files or `max_chunk_seconds` of audio, whichever
        comes first, so memory stays bounded however long the files are. A file that cannot be
        read or used goes to `failed` with its reason; with `strict` it raises instead.
        `progress`: a tqdm bar advanced by the number of files of each chunk done.
        """
        chunk, waveforms, seconds = EmbeddedChunk(), [], 0.0
        for path in paths:
            try:
                samples, rate = load_audio(path)
                waveform = self.waveform(samples, rate, name=os.fspath(path))
            except ValueError as error:  # AudioFileError, or the clip-checks' ValueError naming the path
                reason = error.reason if isinstance(error, AudioFileError) else str(error).removeprefix(f"{os.fspath(path)}: ")
                if strict:
                    raise AudioFileError(path, reason) from error
                chunk.failed.append({"path": os.fspath(path), "reason": reason})
            else:
                chunk.paths.append(os.fspath(path))
                chunk.durations.append(waveform.shape[0] / self.rate)
                waveforms.append(waveform)
                seconds += chunk.durations[-1]
            if len(chunk.paths) + len(chunk.failed) >= files_per_chunk or seconds >= max_chunk_seconds:
                yield self._finish(chunk, waveforms, progress)
                chunk, waveforms, seconds = EmbeddedChunk(), [], 0.0
        if chunk.paths or chunk.failed:
            yield self._finish(chunk, waveforms, progress)

    def _finish(self, chunk: EmbeddedChunk, waveforms, progress) -> EmbeddedChunk:
        dim = self.model.config.projection_dim
        chunk.embeddings = self.embed_waveforms(waveforms) if waveforms else torch.zeros(0, dim)
        if progress is not None:
            progress.update(len(chunk.paths) + len(chunk.failed))
        return chunk


__all__ = ["ClaspEmbedder", "EmbeddedChunk", "window_bounds"]
