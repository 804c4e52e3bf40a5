"""ClaspFeatureExtractor: audio of any rate, channel count and sample type → CLASP model inputs.

For each clip, independently of the others in its batch:
  1. samples → float32 in [-1, 1], channels averaged to mono, resampled to 16 kHz;
  2. the speech encoder's input, named as transformers names it: `input_values`, the normalised
     waveform (HuBERT / wav2vec2 / WavLM, as Wav2Vec2FeatureExtractor), or `input_features`,
     Whisper's log-mel (same filters and scaling as WhisperFeatureExtractor) at the clip's real length
     or, with `whisper_padding="max_length"`, of the clip zero-padded to 30 s, as Whisper was pretrained;
  3. `pixel_values` for the spectrogram CNN: a log-mel spectrogram in dB, scaled to [0, 1], resized
     to the CNN's square input and normalised with its ImageNet mean/std (3 channels) — the tensor
     version of the paper's plotted spectrogram picture.
Then the speech input is padded to the longest clip and its mask, `input_values_mask` or
`input_features_mask`, marks the real part. transformers' speech-text feature extractors name it
so (Gemma 3n/4, Granite Speech, Parakeet: `input_features_mask`); `attention_mask` belongs to the
tokenizer, and the zero-shot-audio-classification pipeline passes both outputs to the model.

Channel layout, decided by whoever decoded the audio, never guessed from the shape: one clip is
1-D (samples, mono) or 2-D (channels, samples), as torchaudio, torchcodec and soundfile's
`always_2d=True` transposed return it.

This file is also published flat on the Hub: it imports only numpy, torch, torchaudio, transformers.
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from transformers import BatchFeature, SequenceFeatureExtractor
from transformers.audio_utils import mel_filter_bank
from transformers.utils import PaddingStrategy

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Float samples past ±1 (a loud mix, int16 values stored as floats) are taken as they are, but beyond
# this the spectrogram's power overflows float32 (at ~1e16) long before anything is audio.
MAX_FLOAT_PEAK = 1e6
# More rows than this in a 2-D clip is a (samples, channels) array, not channels: FFmpeg's channel
# layouts stop at 64 (7th-order ambisonics).
MAX_CHANNELS = 64


def to_float_mono(audio, name: str = "audio") -> torch.Tensor:
    """One clip as a 1-D float32 tensor in [-1, 1].

    `audio`: 1-D (samples) or 2-D (channels, samples) — torchaudio's and torchcodec's layout; the
    channels are averaged. The layout is not guessed from the shape (a 2-sample stereo clip and an
    8-channel clip of 1 sample are both valid); a 2-D array with more than MAX_CHANNELS rows is
    refused as most likely (samples, channels) — soundfile.read's layout — asking for a transpose.
    Integer samples are scaled by their type's range (uint8 is offset binary, as in WAV files).
    Raises ValueError naming `name` for any other shape, an empty or non-finite clip.
    """
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio)
    if audio.dtype == np.uint8:
        audio = (audio.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(audio.dtype, np.integer):
        audio = audio.astype(np.float32) / float(-np.iinfo(audio.dtype).min)
    elif np.issubdtype(audio.dtype, np.floating) or audio.dtype == np.bool_:
        audio = audio.astype(np.float32)
    else:
        raise ValueError(f"{name}: unsupported sample type {audio.dtype}")
    if audio.ndim == 2:
        if audio.shape[0] > MAX_CHANNELS:
            raise ValueError(f"{name}: a 2-D clip is (channels, samples); shape {audio.shape} would be "
                             f"{audio.shape[0]} channels (at most {MAX_CHANNELS}): transpose a (samples, channels) array")
        audio = audio.mean(axis=0)
    if audio.ndim != 1:
        raise ValueError(f"{name}: expected 1-D (samples) or 2-D (channels × samples) audio, got shape {audio.shape}")
    if audio.size == 0:
        raise ValueError(f"{name}: the clip is empty (0 samples)")
    if not np.isfinite(audio).all():
        raise ValueError(f"{name}: the clip contains NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_FLOAT_PEAK:
        raise ValueError(f"{name}: samples reach {peak:.3g}, 120 dB past full scale: not audio in [-1, 1] "
                         "(integer samples are scaled by their type; float samples are taken as they are)")
    return torch.from_numpy(np.ascontiguousarray(audio))


class ClaspFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Args:
        speech_features (`str`): "waveform" (HuBERT, wav2vec2, WavLM) or "whisper_log_mel".
        feature_size (`int`): 1 for waveforms, the number of mel bins (80) for Whisper.
        sampling_rate (`int`): the rate the encoders expect (16 kHz); inputs at other rates are resampled.
        do_normalize (`bool`): zero-mean, unit-variance waveform per clip (as Wav2Vec2FeatureExtractor).
        min_samples (`int`): shorter clips are padded with silence up to this length (one encoder frame).
        max_samples (`int` or `None`): longer clips are refused (Whisper's 30 s); window them instead.
        whisper_n_fft, whisper_hop_length: Whisper's STFT.
        whisper_padding (`str`): "real" (the clip's real length) or "max_length" (the waveform
            zero-padded to `max_samples`, 30 s, before the log-mel: exactly
            `WhisperFeatureExtractor()(audio, padding="max_length")`; its mask marks the frames that
            start in real audio, as WhisperFeatureExtractor's `attention_mask`). The model's
            `speech_whisper_padding` must be the same.
        spectrogram_n_fft, spectrogram_hop_length, spectrogram_n_mels, spectrogram_top_db: the CNN's log-mel.
        image_size, image_mean, image_std: the CNN's input size and normalisation.
    """


    def __init__(
        self,
        speech_features="waveform",
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        min_samples=400,
        max_samples=None,
        whisper_n_fft=400,
        whisper_hop_length=160,
        whisper_padding="real",
        spectrogram_n_fft=1024,
        spectrogram_hop_length=320,
        spectrogram_n_mels=128,
        spectrogram_top_db=80.0,
        image_size=224,
        image_mean=None,
        image_std=None,
        **kwargs,
    ):
        if speech_features not in ("waveform", "whisper_log_mel"):
            raise ValueError(f"speech_features must be 'waveform' or 'whisper_log_mel', got {speech_features!r}")
        if whisper_padding not in ("real", "max_length"):
            raise ValueError(f"whisper_padding must be 'real' or 'max_length', got {whisper_padding!r}")
        if whisper_padding == "max_length" and (speech_features != "whisper_log_mel" or max_samples is None):
            raise ValueError("whisper_padding='max_length' pads Whisper's input to max_samples (30 s): it needs "
                             f"speech_features='whisper_log_mel' and max_samples, got {speech_features!r}, {max_samples!r}")
        kwargs.setdefault("return_attention_mask", True)
        # Where AutoFeatureExtractor / AutoProcessor find our classes in a saved (Hub) folder.
        kwargs.setdefault(
            "auto_map",
            {
                "AutoFeatureExtractor": "feature_extraction_clasp.ClaspFeatureExtractor",
                "AutoProcessor": "processing_clasp.ClaspProcessor",
            },
        )
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.speech_features = speech_features
        self.do_normalize = do_normalize
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.whisper_n_fft = whisper_n_fft
        self.whisper_hop_length = whisper_hop_length
        self.whisper_padding = whisper_padding
        self.spectrogram_n_fft = spectrogram_n_fft
        self.spectrogram_hop_length = spectrogram_hop_length
        self.spectrogram_n_mels = spectrogram_n_mels
        self.spectrogram_top_db = spectrogram_top_db
        self.image_size = image_size
        self.image_mean = list(image_mean or IMAGENET_MEAN)
        self.image_std = list(image_std or IMAGENET_STD)

    def to_dict(self) -> dict:
        settings = super().to_dict()
        if settings.get("whisper_padding") == "real":  # the default is left out: saved as before it existed
            del settings["whisper_padding"]
        return settings

    @property
    def speech_input_name(self) -> str:
        """What transformers calls the speech encoder's input: `input_features` (log-mel), `input_values` (waveform)."""
        return "input_features" if self.speech_features == "whisper_log_mel" else "input_values"

    @property
    def model_input_names(self) -> list[str]:
        return [self.speech_input_name, f"{self.speech_input_name}_mask", "pixel_values"]

    # ---- per clip --------------------------------------------------------------------------

    def whisper_log_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """`[n_mels, n_samples // hop]`: WhisperFeatureExtractor's log-mel, without padding to 30 s.

        Whisper clamps at (max − 8) and scales by (x + 4) / 4; the 30 s zero padding it normally adds
        only lowers values below the clamp, so the real frames come out the same.
        """
        filters = mel_filter_bank(
            num_frequency_bins=1 + self.whisper_n_fft // 2,
            num_mel_filters=self.feature_size,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=self.sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        window = torch.hann_window(self.whisper_n_fft)
        stft = torch.stft(waveform, self.whisper_n_fft, self.whisper_hop_length, window=window, return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = torch.from_numpy(filters.T).to(power.dtype) @ power
        log_spec = mel.clamp(min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0

    def spectrogram_image(self, waveform: torch.Tensor) -> torch.Tensor:
        """`[3, image_size, image_size]`: the clip's log-mel spectrogram as the CNN's input picture."""
        mel = torchaudio.functional.melscale_fbanks(
            n_freqs=self.spectrogram_n_fft // 2 + 1,
            f_min=0.0,
            f_max=self.sampling_rate / 2,
            n_mels=self.spectrogram_n_mels,
            sample_rate=self.sampling_rate,
        )
        window = torch.hann_window(self.spectrogram_n_fft)
        n_fft = self.spectrogram_n_fft
        if waveform.shape[0] <= n_fft // 2:  # reflect padding needs more samples than half a window
            waveform = F.pad(waveform, (0, n_fft // 2 + 1 - waveform.shape[0]))
        stft = torch.stft(waveform, n_fft, self.spectrogram_hop_length, window=window, return_complex=True)
        power = mel.T @ (stft.abs() ** 2)  # [n_mels, frames]
        db = 10.0 * power.clamp(min=1e-10).log10()
        top = db.max()
        db = torch.maximum(db, top - self.spectrogram_top_db)
        picture = (db - (top - self.spectrogram_top_db)) / self.spectrogram_top_db  # [0, 1]
        picture = picture.flip(0)  # low frequencies at the bottom, as in a plotted spectrogram
        picture = F.interpolate(picture[None, None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)[0]
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (picture.expand(3, -1, -1) - mean) / std

    def prepare_clip(self, audio, sampling_rate: int, name: str = "audio", max_length: int | None = None) -> torch.Tensor:
        """One clip → mono float32 at `self.sampling_rate`, cut at `max_length` samples if given, at
        least `min_samples` long."""
        waveform = to_float_mono(audio, name)
        if sampling_rate != self.sampling_rate:
            waveform = torchaudio.functional.resample(waveform, sampling_rate, self.sampling_rate)
        waveform = waveform[:max_length]
        if self.max_samples is not None and waveform.shape[0] > self.max_samples:
            raise ValueError(
                f"{name}: {waveform.shape[0] / self.sampling_rate:.1f} s is longer than this encoder's "
                f"{self.max_samples / self.sampling_rate:.0f} s; split it into windows (clasp embed does)."
            )
        if waveform.shape[0] < self.min_samples:
            waveform = F.pad(waveform, (0, self.min_samples - waveform.shape[0]))
        return waveform

    def speech_input(self, waveform: torch.Tensor) -> torch.Tensor:
        """`[time]` (waveform) or `[n_mels, frames]` (Whisper) for the speech encoder."""
        if self.speech_features == "whisper_log_mel" and self.whisper_padding == "max_length":
            return self.whisper_log_mel(F.pad(waveform, (0, self.max_samples - waveform.shape[0])))
        if self.speech_features == "whisper_log_mel":
            return self.whisper_log_mel(waveform)
        if self.do_normalize:
            return (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)
        return waveform

    # ---- batch -----------------------------------------------------------------------------

    def __call__(self, audio, sampling_rate=None, padding=True, max_length=None, truncation=False,
                 return_attention_mask=None, return_tensors="pt") -> BatchFeature:
        """Features of one clip or a list of clips.

        audio: a 1-D array/tensor/list (one mono clip), a list of clips (each 1-D mono or 2-D
            (channels, samples), see `to_float_mono`), or a 2-D array (a batch of equal-length mono
            clips, the transformers convention: never one multichannel clip; wrap that in a list).
            Any sample type: int8/uint8/int16/int32 are scaled to [-1, 1]; floats are taken as they are.
        sampling_rate: the rate of `audio`; it is resampled to `self.sampling_rate`.
        padding, max_length, truncation: as transformers' `SequenceFeatureExtractor.pad`, with
            `max_length` in samples at `self.sampling_rate` (after resampling), as
            Wav2Vec2FeatureExtractor and WhisperFeatureExtractor count it. padding=True / "longest"
            pads the speech input to the longest clip, "max_length" to `max_length` samples (Whisper:
            their frames), False / "do_not_pad" not at all (the clips must then give equal lengths).
            truncation=True cuts each clip at `max_length` samples before any feature is computed,
            so both branches see the same cut clip; without it a clip longer than a "max_length"
            padding is an error. Each clip is still padded to `min_samples`.
        return_attention_mask: return the speech input's mask (default: `self.return_attention_mask`).
        return_tensors: "pt" (torch tensors) or "np" / None (numpy arrays).
        Other values raise a ValueError.

        Returns a BatchFeature of `input_values` `[batch, samples]` (waveform encoders) or
        `input_features` `[batch, n_mels, frames]` (Whisper), padded with `padding_value`; its mask
        `input_values_mask` / `input_features_mask` `[batch, samples or frames]` (1 real, 0
        padding); `pixel_values` `[batch, 3, image_size, image_size]`.
        """
        if padding not in (True, False, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")
        strategy = self._get_padding_strategies(padding, max_length)  # refuses "max_length" without max_length
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < self.min_samples):
            raise ValueError(f"max_length must be a number of samples of at least min_samples={self.min_samples}, "
                             f"got {max_length!r}")
        if truncation and max_length is None:
            raise ValueError(f"truncation=True needs max_length (samples at {self.sampling_rate} Hz)")
        if sampling_rate is None:
            warnings.warn(
                f"ClaspFeatureExtractor got no sampling_rate; assuming {self.sampling_rate} Hz. "
                "Pass sampling_rate= to avoid silently wrong features.",
                stacklevel=2,
            )
            sampling_rate = self.sampling_rate
        clips = self._as_clip_list(audio)
        waveforms = [self.prepare_clip(clip, sampling_rate, name=f"audio[{i}]", max_length=max_length if truncation else None)
                     for i, clip in enumerate(clips)]
        speech = [self.speech_input(w) for w in waveforms]
        real = [s.shape[-1] for s in speech]
        if self.whisper_padding == "max_length":  # the frames that start in real audio
            real = [-(-w.shape[0] // self.whisper_hop_length) for w in waveforms]
        longest = max(s.shape[-1] for s in speech)
        if strategy == PaddingStrategy.MAX_LENGTH:
            for i, waveform in enumerate(waveforms):
                if waveform.shape[0] > max_length:
                    raise ValueError(f"audio[{i}]: {waveform.shape[0]} samples, longer than max_length={max_length}; "
                                     "pass truncation=True to cut it")
            longest = max_length if self.speech_features == "waveform" else max_length // self.whisper_hop_length
            if self.whisper_padding == "max_length" and max_length != self.max_samples:
                raise ValueError(f"whisper_padding='max_length' pads every clip to max_samples={self.max_samples}; "
                                 f"padding='max_length' with max_length={max_length} differs")
        elif strategy == PaddingStrategy.DO_NOT_PAD and any(s.shape[-1] != longest for s in speech):
            raise ValueError(f"padding=False: the clips differ in length ({[s.shape[-1] for s in speech]} "
                             "speech-input steps) and cannot form one batch; pass padding=True")
        speech_inputs = torch.full((len(speech), *speech[0].shape[:-1], longest), float(self.padding_value))
        mask = torch.zeros(len(speech), longest, dtype=torch.long)
        for i, s in enumerate(speech):
            speech_inputs[i, ..., : s.shape[-1]] = s
            mask[i, : real[i]] = 1
        features = {
            self.speech_input_name: speech_inputs,
            f"{self.speech_input_name}_mask": mask,
            "pixel_values": torch.stack([self.spectrogram_image(w) for w in waveforms]),
        }
        if not (self.return_attention_mask if return_attention_mask is None else return_attention_mask):
            del features[f"{self.speech_input_name}_mask"]
        if return_tensors in (None, "np"):
            features = {k: v.numpy() for k, v in features.items()}
        return BatchFeature(features, tensor_type=None)

    @staticmethod
    def _as_clip_list(audio) -> list:
        if isinstance(audio, (list, tuple)):
            if len(audio) == 0:
                raise ValueError("audio: got an empty list of clips")
            if all(np.isscalar(x) for x in audio):  # one clip given as a list of samples
                return [np.asarray(audio)]
            return list(audio)
        if isinstance(audio, (np.ndarray, torch.Tensor)):
            if audio.ndim == 2:  # transformers' convention: a batch of mono clips
                return list(audio)
            return [audio]
        raise TypeError(f"audio: expected an array, a tensor or a list of them, got {type(audio).__name__}")


__all__ = ["ClaspFeatureExtractor", "to_float_mono"]
