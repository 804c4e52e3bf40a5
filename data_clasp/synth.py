"""Synthetic multilingual speech: corpus sentences read aloud by espeak-ng (and, when asked, the
neural voices of `neural_voices`: Piper, Kokoro-82M), in the CLASP schema.

One clip is one call of `espeak-ng` (~20 ms a sentence) with a voice, a variant (+m3, +f2,
+klatt...), a speed and a pitch drawn from a generator seeded by the clip's own identity
(seed, language, text, take); with several engines, which one speaks is drawn the same way. So a
clip's sound depends on nothing else: not on which worker made it, not on what ran before, not on an
interruption. That is what makes a run resumable:

    output/clips/<language>/<clip id>.wav   16 kHz mono, written to a temporary name and renamed
    output/progress.jsonl                   one line per finished clip (kept or rejected, and why)
    output/manifest.jsonl                   the kept clips, with split, in `load_manifest` format
    output/dataset/                         the DatasetDict (`save_to_disk`), audio embedded

A rerun skips every clip in progress.jsonl (except those whose engine failed: a crash or a timeout
is tried again) and ends with the same manifest and dataset as an uninterrupted run. Clips outside
0.3–20 s or silent are rejected, as the paper's filter did, and the next sentence of that language
takes the place. Splits are cut 80/10/10 by group.
"""

import io
import json
import os
import random
import shutil
import subprocess
import unicodedata
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import neural_voices
from .corpora import Sentence, merge_groups
from .files import write_atomically
from .schema import SAMPLING_RATE, split_of_groups, stable_hash

MIN_SECONDS, MAX_SECONDS = 0.3, 20.0
SILENT_RMS = 10 ** (-50 / 20)  # below -50 dBFS nothing is being said
SPEED = (130, 200)  # words per minute; espeak's default is 175
PITCH = (25, 75)  # 0-99; default 50
# espeak-ng variants that still sound like speech (whisper, croak, the robots and "Demonic" don't).
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
    "Alex", "Andy", "Annie", "adam", "anika", "aunty", "belinda", "benjamin", "boris", "caleb", "david",
    "ed", "edward", "gustave", "iven", "john", "linda", "max", "michel", "miguel", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
)
# Voices that read another script than the corpus text, or are another language under one code.
SKIPPED_VOICES = {"fa-latn", "cmn", "yue", "hak"}
# Chinese: espeak's Debian build has no Hanzi dictionary (it says "Chinese letter"), so the text is
# turned into tone-numbered pinyin for the `cmn-latn-pinyin` voice; the row keeps the Hanzi.
VOICE_OVERRIDES = {"zh": ("cmn-latn-pinyin",)}
UNSPEAKABLE = {"ja": "espeak-ng reads only kana, not the kanji of Japanese text"}


class SynthesisStopped(Exception):
    """Raised by `synthesize(stop_after=K)`: K new clips were made, as if the run were killed."""


# ------------------------------------------------------------------------------------- voices


def espeak_voices() -> dict:
    """{language code: voice file} of the installed espeak-ng voices, e.g. "en-us": "gmw/en-US".

    Voices are called by file, not by code: `-v fr-fr+m3` resolves the code to an (absent)
    mbrola voice and silently drops the +m3 variant, while `-v roa/fr+m3` applies it.
    """
    if not shutil.which("espeak-ng"):
        raise RuntimeError("espeak-ng not found: apt-get install espeak-ng")
    listing = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True, check=True).stdout
    voices = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and not fields[4].startswith("mb/"):  # mbrola voices need extra packages
            voices.setdefault(fields[1], fields[4])
    return voices


def voices_for(language: str, available: dict) -> list:
    """espeak-ng voice files (accents) that can read text of `language`: en -> gmw/en-US, gmw/en, ..."""
    if language in UNSPEAKABLE:
        return []
    if language in VOICE_OVERRIDES:
        if language == "zh":
            try:
                import pypinyin  # noqa: F401
            except ImportError:
                return []
        return [available[v] for v in VOICE_OVERRIDES[language] if v in available]
    codes = [v for v in available if (v == language or v.startswith(language + "-")) and v not in SKIPPED_VOICES]
    return sorted({available[code] for code in codes})


def spoken_form(language: str, text: str) -> str:
    """What espeak is given: the text itself, or pinyin with tone numbers for Chinese."""
    if language != "zh":
        return text
    from pypinyin import Style, lazy_pinyin

    text = unicodedata.normalize("NFKC", text).replace("\u3002", ". ").replace("\u3001", ", ")
    return " ".join(" ".join(lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True)).split())


# -------------------------------------------------------------------------------------- planning


def candidates(sentences, language: str, seed: int) -> list:
    """This language's sentences in the order they will be used: shuffled by seed within each
    source, then taken from the sources in turn, so a small run still samples every source
    instead of being all Bible because the Bible is large."""
    by_source = defaultdict(list)
    for s in sentences:
        if s.language == language:
            by_source[s.source].append(s)
    queues = [sorted(v, key=lambda s: stable_hash(seed, s.group, s.text)) for _, v in sorted(by_source.items())]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def plan_clip(sentence, take: int, seed: int, voices: list, engines=None) -> dict:
    """A clip's identity and voice. `engines` ({name: weight} that speak this language; None: espeak)
    is drawn from with a generator of its own, so an espeak clip sounds the same in any engine mix."""
    clip_id = format(stable_hash("clip", seed, sentence.language, sentence.text, take), "016x")
    rng = random.Random(stable_hash("voice", clip_id))
    engine = "espeak"
    if engines and list(engines) != ["espeak"]:
        names = sorted(engines)
        engine = random.Random(stable_hash("engine", clip_id)).choices(names, [engines[n] for n in names])[0]
    if engine == "espeak":
        voice = {"voice": f"{rng.choice(voices)}+{rng.choice(VARIANTS)}", "speed": rng.randint(*SPEED),
                 "pitch": rng.randint(*PITCH)}
    else:
        voice = neural_voices.plan_voice(engine, rng)
    return {
        "id": clip_id,
        "audio": f"clips/{sentence.language}/{clip_id}.wav",
        "text": sentence.text,
        "language": sentence.language,
        "source": f"{engine}:{sentence.source}",
        "category": sentence.category,
        "group": sentence.group,
        "unit": sentence.unit,
        **voice,
    }


def engines_for(language: str, engines: dict, espeak_voices: list) -> dict:
    """The engines of `engines` ({name: weight}) that can speak `language`."""
    return {name: weight for name, weight in engines.items()
            if (espeak_voices if name == "espeak" else language in neural_voices.LANGUAGES[name])}


# -------------------------------------------------------------------------------------- one clip


def render(clip: dict, output: str) -> dict:
    """Speak one clip, check it, write it if kept. Returns the clip with `status` and `duration`."""
    import soundfile
    import torch
    import torchaudio

    engine = clip["source"].partition(":")[0]
    try:
        if engine == "espeak":
            wav = subprocess.run(
                ["espeak-ng", "-v", clip["voice"], "-s", str(clip["speed"]), "-p", str(clip["pitch"]), "--stdout"],
                input=spoken_form(clip["language"], clip["text"]).encode(), capture_output=True, check=True, timeout=120,
            ).stdout
            audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        else:
            audio, rate = neural_voices.speak(clip)
            audio = audio[:, None]
    except Exception as error:
        return {**clip, "status": f"{engine} failed: {type(error).__name__}: {error}"[:200], "duration": 0.0}
    audio = torch.from_numpy(audio.mean(axis=1))
    if rate != SAMPLING_RATE:  # espeak-ng and Piper speak at 22.05 kHz, Kokoro at 24 kHz
        audio = torchaudio.functional.resample(audio, rate, SAMPLING_RATE)
    audio = audio.clamp(-1, 1).numpy()
    duration = round(len(audio) / SAMPLING_RATE, 3)
    rms = float(np.sqrt(np.mean(audio**2))) if len(audio) else 0.0
    status = ("too short" if duration < MIN_SECONDS else "too long" if duration > MAX_SECONDS
              else "silent" if rms < SILENT_RMS else "ok")
    if status == "ok":
        path = Path(output, clip["audio"])
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
        soundfile.write(temporary, audio, SAMPLING_RATE, subtype="PCM_16", format="WAV")
        os.replace(temporary, path)  # a clip on disk is always whole
    return {**clip, "status": status, "duration": duration}


def _init_worker():
    import torch

    torch.set_num_threads(1)  # one clip per core; torch's own threads would only fight over it


def _render_star(job):
    return render(*job)


# ----------------------------------------------------------------------------------------- a run


def read_progress(path: Path) -> dict:
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                done[record["id"]] = record
            except (json.JSONDecodeError, KeyError):
                pass  # the last line of a killed run may be cut short
    return done


def synthesize(sentences, languages, per_language, output, seed: int = 0, takes: int = 1,
               workers: int = 2, stop_after=None, progress_bar: bool = True, engines=None, split_of=None,
               translations=None):
    """Speak `per_language` sentences of each language (each `takes` times, in different voices),
    write clips, manifest and dataset under `output`, and return the DatasetDict. `per_language=None`:
    every sentence of `sentences` in each language (as `--from-manifest` does by default).

    `engines`: {name: weight} of `neural_voices.ENGINES` (default {"espeak": 1}); each clip is spoken
    by one of those that speak its language, drawn in proportion to the weights. Raises ValueError
    for a language that none of them speaks, ImportError (with the pip command) for a neural engine
    whose packages are missing.
    `split_of` ({group: split}) and `translations` ({unit: {language: text}}) keep those of an
    existing dataset (`sentences_of_manifest`) instead of cutting splits and collecting translations anew.

    `stop_after=K` stops (raising SynthesisStopped) once K new clips are made: how the tests
    interrupt a run without killing a process.
    """
    from tqdm.auto import tqdm

    output = Path(output)
    (output / "clips").mkdir(parents=True, exist_ok=True)
    for leftover in (output / "clips").glob("*/*.tmp*"):
        leftover.unlink()  # half-written by a run that was killed
    engines = dict(engines or {"espeak": 1.0})
    for name in engines:
        if name != "espeak":
            neural_voices.check_installed(name)
    available = espeak_voices()
    voices = {language: voices_for(language, available) if "espeak" in engines else [] for language in languages}
    speakers = {language: engines_for(language, engines, voices[language]) for language in languages}
    silent = {lang: UNSPEAKABLE.get(lang, "needs `pip install pypinyin`" if lang == "zh" else "no espeak-ng voice")
              if "espeak" in engines else f"none of {', '.join(engines)} speaks it"
              for lang, v in speakers.items() if not v}
    if silent:
        raise ValueError("can't speak " + "; ".join(f"{lang}: {why}" for lang, why in silent.items()))

    if not all(s.group for s in sentences):
        sentences = merge_groups(sentences)
    given, translations = translations or {}, defaultdict(dict)  # unit -> {language: text}
    for unit, texts in given.items():
        translations[unit].update(texts)
    for s in sentences:
        translations[s.unit].setdefault(s.language, s.text)
    queues = {lang: candidates(sentences, lang, seed) for lang in languages}
    wanted = {lang: len(queue) if per_language is None else per_language for lang, queue in queues.items()}
    for lang, queue in queues.items():
        if len(queue) < wanted[lang] or not queue:
            asked = "" if per_language is None else f" (asked for {per_language})"
            warnings.warn(f"only {len(queue)} sentences for {lang}{asked}", stacklevel=2)

    progress_path = output / "progress.jsonl"
    done = read_progress(progress_path)
    kept = {lang: [] for lang in languages}  # kept sentences' clips, in plan order
    used = {lang: 0 for lang in languages}  # how far down its queue each language is
    made = planned = 0
    bar = tqdm(total=sum(min(wanted[lang], len(q)) for lang, q in queues.items()) * takes, unit="clip",
               disable=not progress_bar, desc="synthesising")
    pool = None
    try:
        with open(progress_path, "a", encoding="utf-8") as log:
            if log.tell() and not progress_path.read_bytes().endswith(b"\n"):
                log.write("\n")  # end the line a killed run left half-written
            while True:
                wave = []  # (language, [clips of one sentence]) for the sentences still needed
                for lang in languages:
                    need = min(wanted[lang] - len(kept[lang]), len(queues[lang]) - used[lang])
                    for sentence in queues[lang][used[lang]:used[lang] + need]:
                        wave.append((lang, [plan_clip(sentence, t, seed, voices[lang], speakers[lang]) for t in range(takes)]))
                    used[lang] += need
                if not wave:
                    break
                planned += sum(len(clips) for _, clips in wave)
                bar.total = max(bar.total, planned)  # replacements for rejected clips add to the plan
                todo = [c for _, clips in wave for c in clips  # not done, lost, done in another voice, or failed
                        if c["id"] not in done or done[c["id"]].get("voice") != c["voice"]
                        or (done[c["id"]]["status"] == "ok" and not (output / c["audio"]).exists())
                        or done[c["id"]]["status"].startswith(tuple(f"{e} failed" for e in neural_voices.ENGINES))]
                bar.update(sum(len(clips) for _, clips in wave) - len(todo))
                if todo and workers > 1 and pool is None:
                    import multiprocessing

                    import torchaudio  # noqa: F401  imported before forking, so workers inherit it

                    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
                results = (pool.imap_unordered(_render_star, [(c, str(output)) for c in todo], chunksize=4)
                           if pool else (render(c, str(output)) for c in todo))
                for record in results:
                    done[record["id"]] = record
                    log.write(json.dumps(record, ensure_ascii=False) + "\n")
                    log.flush()
                    bar.update(1)
                    made += 1
                    if stop_after is not None and made >= stop_after:
                        raise SynthesisStopped(f"stopped after {made} new clips")
                for lang, clips in wave:
                    good = [done[c["id"]] for c in clips if done[c["id"]]["status"] == "ok"]
                    if good:
                        kept[lang].append(good)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return write_dataset(output, [c for lang in languages for clips in kept[lang] for c in clips], translations, split_of)


def sentences_of_manifest(path, splits=None) -> tuple:
    """(sentences, {group: split}, {unit: {language: text}}) of a `clasp data` manifest, each distinct
    (language, text) once: to speak a dataset again in other voices (`clasp data synth --from-manifest`)
    with its groups, splits and translations, so the two can be trained on together.

    `splits`: keep only rows of these splits (train, validation, test or an alias: val, dev...).
    Raises ValueError if a row has no split, for an unknown split name, or if no row is left."""
    from .loaders import _split_name, read_manifest

    wanted = {_split_name(name, f"--splits {','.join(splits)}") for name in splits} if splits else None
    sentences, split_of, translations = {}, {}, {}
    for row in read_manifest(path):
        if not row["split"]:  # read_manifest gives "" for a row without one
            raise ValueError(f"{row['name']}: no split; --from-manifest keeps the manifest's splits")
        if wanted and row["split"] not in wanted:
            continue
        unit = f"{row['group']}|{row['language']}|{row['text']}"
        source = row["source"].partition(":")[2] if row["source"].partition(":")[0] in neural_voices.ENGINES else row["source"]
        sentences.setdefault((row["language"], row["text"]),
                             Sentence(row["language"], row["text"], source, row["category"], unit, row["group"]))
        split_of[row["group"]] = row["split"]
        translations[unit] = {row["language"]: row["text"], **row["translations"]}
    if not sentences:
        raise ValueError(f"{path}: no rows" + (f" of split(s) {', '.join(sorted(wanted))}" if wanted else ""))
    return list(sentences.values()), split_of, translations


def write_dataset(output: Path, clips: list, translations: dict, split_of=None):
    """manifest.jsonl (atomically) and dataset/ from the kept clips, split by group (or as `split_of` says)."""
    import datasets

    from .loaders import load_manifest, save_dataset

    split_of = split_of or split_of_groups(c["group"] for c in clips)
    manifest = output / "manifest.jsonl"
    rows = []
    for c in clips:
        others = {k: v for k, v in sorted(translations[c["unit"]].items()) if k != c["language"]}
        rows.append({"audio": c["audio"], "text": c["text"], "language": c["language"], "source": c["source"],
                     "category": c["category"], "translations": others, "group": c["group"],
                     "split": split_of[c["group"]], "duration": c["duration"], "voice": c["voice"],
                     "speed": c["speed"], "pitch": c["pitch"]})
    write_atomically(manifest, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # synthesis had its own bar; a dozen more say nothing
    try:
        dataset, skipped = load_manifest(manifest)
        if skipped:
            raise RuntimeError(f"{len(skipped)} written clips do not decode, e.g. {skipped[:3]}")
        save_dataset(dataset, output / "dataset")
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return dataset
