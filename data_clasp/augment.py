"""Seeded audio augmentation of a clip, for `clasp features --augment K` (issue #16).

The synthetic voices CLASP trains on are clean, close-miked and full-band; real queries are not.
Each augmented copy ("view") of a clip runs a chain of the transforms below, each applied with its
probability (at least one per view), in the order a recording meets them:

    speed       speed perturbation by a factor 0.9–1.1 in steps of 0.01 (tempo and pitch together, as
                Kaldi's 3-way speed perturbation; Ko et al., Interspeech 2015): factor 1.1 is 1/1.1 as long
    rir         a synthetic room: convolution with exponentially decaying Gaussian noise whose energy
                falls 60 dB in RT60 = 0.2–0.8 s (Schroeder's diffuse-field model), behind a direct path
                as strong as the whole tail; the output keeps the input's length and RMS
    noise       additive noise at an SNR of 5–30 dB over the whole clip, white, pink (1/f) or brown
                (1/f²) Gaussian noise (we have no noise corpus offline)
    telephone   the narrow band of a phone line: resampled to 8 kHz, band-passed 300–3400 Hz, μ-law
                companded (G.711, 8 bits) half of the time, resampled back: nothing above 4 kHz

What a view draws depends only on (the clip, its view number, the seed): `view_generator` seeds a
torch.Generator from their SHA-256, so a view is the same whichever worker, chunk or resumed run
computes it. The clip is identified by its samples and its text (`clip_identity`), not by a file
path, which may move. Each view's description says what was applied, e.g. "speed:1.07,rir:0.41s,noise:12.3dB:pink".

Library: torchaudio.functional (already a dependency: the processor resamples with it), for the
signal processing, each a documented, tested function: `speed`, `resample`, `fftconvolve`,
`add_noise` (exact SNR), `highpass_biquad`/`lowpass_biquad` (RBJ Audio EQ Cookbook filters),
`mu_law_encoding`/`mu_law_decoding`. audiomentations/torch-audiomentations draw their parameters from
Python's and NumPy's global random state (a view would depend on what else ran in the process) and
need a noise or impulse-response corpus for their realistic transforms; pyroomacoustics (image-method
rooms, a compiled extension) would only refine the room, which the tail model already gives with the
RT60 that matters for speech features. Only the noise colouring and the impulse response are ours
(a few lines each).
"""

import hashlib
import json

import numpy as np
import torch
import torchaudio.functional as F

# What a view may draw. Part of the cache fingerprint: changing a range or a probability rebuilds the views.
SETTINGS = {
    "order": ["speed", "rir", "noise", "telephone"],
    "probability": {"speed": 0.5, "rir": 0.5, "noise": 0.6, "telephone": 0.3},
    "speed_factor": [0.9, 1.1],
    "rt60_seconds": [0.2, 0.8],
    "snr_db": [5.0, 30.0],
    "noise_colours": ["white", "pink", "brown"],
    "telephone_band_hz": [300.0, 3400.0],
    "mu_law_probability": 0.5,
}


def settings_fingerprint() -> str:
    """SHA-256 of SETTINGS: what the augmented views depend on besides the clip, view and seed."""
    return hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode()).hexdigest()[:16]


def clip_identity(waveform, text: str = "") -> str:
    """SHA-256 of a clip's samples (as float32) and its text: what seeds its views."""
    digest = hashlib.sha256(np.ascontiguousarray(waveform, dtype=np.float32).tobytes())
    digest.update(text.encode())
    return digest.hexdigest()


def view_generator(clip: str, view: int, seed: int) -> torch.Generator:
    """A torch.Generator seeded by (clip identity, view number, seed) alone."""
    digest = hashlib.sha256(f"{seed}/{clip}/{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _uniform(generator, low, high) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def synthetic_rir(rt60: float, sampling_rate: int, generator) -> torch.Tensor:
    """[samples] impulse response: a unit direct path, then Gaussian noise whose energy decays 60 dB in
    `rt60` seconds (amplitude exp(-3 ln 10 · t / rt60)), scaled to the direct path's energy."""
    t = torch.arange(1, int(rt60 * sampling_rate)) / sampling_rate
    tail = torch.randn(len(t), generator=generator) * torch.exp(-3 * np.log(10) * t / rt60)
    return torch.cat([torch.ones(1), tail / tail.norm()])


def coloured_noise(samples: int, colour: str, generator) -> torch.Tensor:
    """[samples] Gaussian noise whose power falls as 1/f^β: white β=0, pink β=1, brown β=2."""
    white = torch.randn(samples, generator=generator)
    beta = SETTINGS["noise_colours"].index(colour)
    if beta == 0:
        return white
    spectrum = torch.fft.rfft(white)
    frequency = torch.arange(len(spectrum), dtype=torch.float32).clamp(min=1)  # the DC bin as the lowest
    return torch.fft.irfft(spectrum * frequency ** (-beta / 2), n=samples)


def augment(waveform, sampling_rate: int, generator, probability: dict | None = None):
    """One augmented view of a clip: (waveform [samples'] float32 numpy, description).

    `waveform` is a mono clip (numpy or torch, [samples], any rate); `probability` overrides
    SETTINGS["probability"] per transform (tests force one). Every parameter is drawn, in a fixed
    order, whether its transform applies or not, so each draw stays the same when another changes.
    If no transform drew, the most probable one is applied: a view is never the clip as it was.
    """
    probability = {**SETTINGS["probability"], **(probability or {})}
    g = generator
    applies = {name: torch.rand((), generator=g).item() < probability[name] for name in SETTINGS["order"]}
    if not any(applies.values()):
        applies[max(SETTINGS["order"], key=lambda name: probability[name])] = True
    factor = round(_uniform(g, *SETTINGS["speed_factor"]), 2)
    rt60 = _uniform(g, *SETTINGS["rt60_seconds"])
    snr = _uniform(g, *SETTINGS["snr_db"])
    colour = SETTINGS["noise_colours"][int(torch.randint(len(SETTINGS["noise_colours"]), (), generator=g))]
    mu_law = torch.rand((), generator=g).item() < SETTINGS["mu_law_probability"]
    rir = synthetic_rir(rt60, sampling_rate, g)  # drawn always: the noise below stays the same either way

    x = torch.as_tensor(np.asarray(waveform), dtype=torch.float32).reshape(-1)
    applied = []
    if applies["speed"] and factor != 1.0:
        x = F.speed(x[None], sampling_rate, factor)[0][0]
        applied.append(f"speed:{factor:.2f}")
    if applies["rir"]:
        wet = F.fftconvolve(x, rir)[: len(x)]
        x = wet * (x.norm() / wet.norm().clamp(min=1e-12))  # the same level: the SNR below means the same
        applied.append(f"rir:{rt60:.2f}s")
    noise = coloured_noise(len(x), colour, g)
    if applies["noise"]:
        x = F.add_noise(x[None], noise[None], torch.tensor([snr]))[0]
        applied.append(f"noise:{snr:.1f}dB:{colour}")
    if applies["telephone"]:
        x = telephone(x, sampling_rate, mu_law)
        applied.append("telephone:mulaw" if mu_law else "telephone")
    return x.numpy().astype(np.float32), ",".join(applied)


def telephone(waveform: torch.Tensor, sampling_rate: int, mu_law: bool) -> torch.Tensor:
    """[samples] at `sampling_rate` through an 8 kHz, 300–3400 Hz line (RBJ biquads), optionally μ-law (8 bits)."""
    low, high = SETTINGS["telephone_band_hz"]
    line = F.resample(waveform, sampling_rate, 8000)
    peak = line.abs().max().clamp(min=1e-12)  # torchaudio's filters and μ-law work in [-1, 1]
    line = F.lowpass_biquad(F.highpass_biquad(line / peak, 8000, low), 8000, high)
    if mu_law:
        line = F.mu_law_decoding(F.mu_law_encoding(line.clamp(-1, 1), 256), 256)
    out = F.resample(line * peak, 8000, sampling_rate)
    return torch.nn.functional.pad(out, (0, max(0, len(waveform) - len(out))))[: len(waveform)]


def augmented_views(waveform, sampling_rate: int, text: str, copies: int, seed: int) -> list:
    """[(waveform, description)] of views 1..copies of one clip (view 0 is the clip itself)."""
    clip = clip_identity(waveform, text)
    return [augment(waveform, sampling_rate, view_generator(clip, view, seed)) for view in range(1, copies + 1)]


__all__ = ["SETTINGS", "augment", "augmented_views", "clip_identity", "view_generator", "settings_fingerprint",
           "synthetic_rir", "coloured_noise", "telephone"]
