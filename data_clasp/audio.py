"""Decoding audio files, with errors that name the file and the reason.

soundfile (libsndfile) reads WAV/FLAC/OGG quickly and exactly; anything else (MP3, M4A, OPUS in
containers...) goes through torchcodec's FFmpeg decoder. Samples come back as they are stored, in
one layout, `[channels, samples]`, whichever reader decoded them: resampling and downmixing are the
feature extractor's job, so every path gets the same treatment.
"""

import os

import numpy as np

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".m4a", ".aac", ".opus", ".webm", ".wma", ".aiff", ".aif")


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def read_soundfile(path) -> tuple[np.ndarray, int]:
    """(samples `[channels, samples]` float32, sampling rate) through libsndfile."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)  # [samples, channels]
    return np.ascontiguousarray(samples.T), int(rate)


def read_ffmpeg(path) -> tuple[np.ndarray, int]:
    """(samples `[channels, samples]` float32, sampling rate) through torchcodec's FFmpeg decoder."""
    from torchcodec.decoders import AudioDecoder

    decoded = AudioDecoder(path).get_all_samples()  # AudioSamples.data is [channels, samples]
    return decoded.data.numpy().astype(np.float32), int(decoded.sample_rate)


def load_audio(path) -> tuple[np.ndarray, int]:
    """(samples `[channels, samples]` float32, sampling rate) of one file, whichever reader decodes it.

    The layout is fixed here, where the file's channel count is known: always 2-D, channels first
    (a mono file is `[1, samples]`), the layout `ClaspFeatureExtractor` takes.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioFileError(path, "no such file")
    if os.path.isdir(path):
        raise AudioFileError(path, "is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioFileError(path, "empty file (0 bytes)")
    try:
        samples, rate = read_soundfile(path)
    except Exception as soundfile_error:  # not a format libsndfile knows, or a broken one
        try:
            samples, rate = read_ffmpeg(path)
        except Exception as ffmpeg_error:
            reason = str(ffmpeg_error).strip().splitlines()[0] if str(ffmpeg_error).strip() else type(ffmpeg_error).__name__
            raise AudioFileError(path, f"cannot decode audio ({reason}; libsndfile: {soundfile_error})") from ffmpeg_error
    if samples.size == 0:
        raise AudioFileError(path, "contains no samples")
    if not np.isfinite(samples).all():
        raise AudioFileError(path, "contains NaN or infinite samples")
    return samples, int(rate)


def find_audio_files(inputs) -> list[str]:
    """Files given directly, plus audio files found (recursively, sorted) in directories given."""
    found = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            for root, _, names in sorted(os.walk(item)):
                found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(AUDIO_EXTENSIONS)]
        else:
            found.append(item)  # a missing or odd path is reported when it is read
    return found


__all__ = ["AudioFileError", "load_audio", "read_soundfile", "read_ffmpeg", "find_audio_files", "AUDIO_EXTENSIONS"]
