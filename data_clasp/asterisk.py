"""Real speech for evaluation: the Asterisk PBX's studio-read voice prompts, as Debian ships them.

Debian's `asterisk-core-sounds-LANG` packages hold the transcripts (`core-sounds-LANG.txt.gz`,
lines "name: transcript", ";" comments) and their `-g722` packages the recordings, 16 kHz G.722
(decoded by FFmpeg through torchcodec), one speaker a language:

    en  en_US_f_Allison      Allison Smith    CC BY-SA 3.0
    es  es_MX_f_Allison      Allison Smith    CC BY-SA 3.0
    fr  fr_CA_f_June         June Wallack     CC BY-SA 3.0
    it  it_IT_m_Carlo        Carlo Flora      CC BY 3.0
    ru  ru_RU_f_IvrvoiceRU   Maxim Topal      CC BY 3.0
    (licences from /usr/share/doc/asterisk-core-sounds-en/copyright)

A prompt's name ("vm-login", "digits/5") is the same file in every language, so it is the row's
`group`, and the other languages' transcripts are its `translations`: cross-lingual queries come
for free. Splits are cut by a hash of the prompt name, so a prompt falls in the same split in every
language and whichever languages, filters or caps are asked for; prompts that read the same in some
language ("has left the conference" is two prompts) are kept on one side.

`build_asterisk` writes, like `clasp data synth`:

    output/clips/<language>/<voice>/<prompt name>.wav   16 kHz mono PCM
    output/manifest.jsonl                               `load_manifest` format, with split and speaker
    output/README.md                                    the source and the licence of each voice
    output/dataset/                                     the DatasetDict (`save_to_disk`, atomically)

The dataset keeps the schema's columns; the speaker (voice folder) is its `category`.
"""

import bisect
import gzip
import json
import os
import re
from collections import Counter
from itertools import accumulate
from pathlib import Path

import numpy as np

from .files import write_atomically
from .schema import SAMPLING_RATE, SPLITS, normalise_text, stable_hash

LANGUAGES = ("en", "es", "fr", "it", "ru")
SOUNDS = "usr/share/asterisk/sounds"
DOCS = "usr/share/doc"
SOURCE = "asterisk"
# Evaluation data first: no train split unless asked for (a fine-tuning ablation may ask).
SPLIT_FRACTIONS = (0.0, 0.5, 0.5)
MIN_SECONDS = 0.3  # raw G.722 has no header: garbage decodes, but to a few samples of noise
CC_BY_SA = "CC-BY-SA-3.0 (https://creativecommons.org/licenses/by-sa/3.0/)"
CC_BY = "CC-BY-3.0 (https://creativecommons.org/licenses/by/3.0/)"
VOICES = {  # language: (recorded by, licence), as /usr/share/doc/asterisk-core-sounds-*/copyright says
    "en": ("Allison Smith (http://www.theivrvoice.com)", CC_BY_SA),
    "es": ("Allison Smith (http://www.theivrvoice.com)", CC_BY_SA),
    "fr": ("June Wallack (http://www.junewallack.com)", CC_BY_SA),
    "it": ("Carlo Flora (http://www.carloflora.com)", CC_BY),
    "ru": ("Maxim Topal (http://www.ivrvoice.ru)", CC_BY),
}
# "[ascending tones]", "(10 seconds of silence)": a description of the sound, not what is said.
NOT_SPEECH = re.compile(r"\s*(\[[^\]]*\]|\([^)]*\))\s*\.?\s*")


def read_transcripts(path) -> dict:
    """{prompt name: transcript} of a core-sounds-LANG.txt(.gz); the first line of a name wins.

    Transcripts are stripped and their spaces collapsed, nothing else: punctuation, case and the
    files' own typos stay as written. Empty transcripts ("dir-welcome:") are left out.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig") as f:  # the Italian file starts with a BOM
        lines = f.read().splitlines()
    transcripts = {}
    for line in lines:
        name, colon, text = line.partition(":")
        name, text = name.strip(), " ".join(text.split())
        if colon and name and not name.startswith(";") and " " not in name and text:
            transcripts.setdefault(name, text)  # es lists digits/0 twice ("cero", then "diez")
    return transcripts


def word_count(text: str) -> int:
    """Words that are spoken: tokens holding a letter or digit ("space [ ]" is one word)."""
    return sum(any(c.isalnum() for c in token) for token in text.split())


def find_voices(language: str, root="/") -> tuple:
    """(transcript file, [voice folders holding .g722 files]) of one language under `root`.

    FileNotFoundError naming the Debian package to install when either is missing.
    """
    root = Path(root)
    transcripts = root / DOCS / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt.gz"
    if not transcripts.is_file() and language not in LANGUAGES:
        raise FileNotFoundError(f"no Asterisk prompts in {language!r} ({transcripts} is missing): Debian's "
                                f"asterisk-core-sounds packages speak {', '.join(LANGUAGES)}")
    if not transcripts.is_file():
        raise FileNotFoundError(f"no {transcripts}: asterisk-core-sounds-{language} is not installed: "
                                f"apt-get install asterisk-core-sounds-{language}")
    voices = sorted(folder for folder in (root / SOUNDS).glob(f"{language}_*_*")
                    if folder.is_dir() and next(folder.rglob("*.g722"), None))
    if not voices:
        raise FileNotFoundError(f"no {root / SOUNDS}/{language}_*/*.g722: asterisk-core-sounds-{language}-g722 is not "
                                f"installed: apt-get install asterisk-core-sounds-{language}-g722")
    return transcripts, voices


def find_prompts(languages=LANGUAGES, root="/", min_words: int = 3) -> list:
    """[{name, language, speaker, path, text}] of the prompts with a recording and a transcript of
    at least `min_words` spoken words, sound descriptions left out. Every language is checked
    before any is read, so a missing package fails at once."""
    found = {language: find_voices(language, root) for language in languages}
    prompts = []
    for language, (transcript_file, voices) in found.items():
        transcripts = read_transcripts(transcript_file)
        for voice in voices:
            for path in sorted(voice.rglob("*.g722")):
                name = path.relative_to(voice).with_suffix("").as_posix()
                text = transcripts.get(name, "")
                if word_count(text) >= min_words and not NOT_SPEECH.fullmatch(text):
                    prompts.append({"name": name, "language": language, "speaker": voice.name, "path": path, "text": text})
    return prompts


def split_of_prompts(prompts, fractions=SPLIT_FRACTIONS) -> dict:
    """{prompt name: split}, cut by a hash of the name within (train, validation, test) `fractions`.

    Prompts whose transcripts read the same (`normalise_text`) in any language are joined first
    and take the split of the smallest name among them, so no text sits on both sides.
    """
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not np.isclose(sum(fractions), 1):
        raise ValueError(f"split fractions {tuple(fractions)}: give {len(SPLITS)} non-negative numbers "
                         f"({', '.join(SPLITS)}) that add up to 1")
    parent = {}

    def root(name):
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    first = {}
    for prompt in prompts:
        same = root(first.setdefault((prompt["language"], normalise_text(prompt["text"])), prompt["name"]))
        this = root(prompt["name"])
        parent[max(same, this)] = min(same, this)  # a root is always the smallest name of its set
    bounds = list(accumulate(fractions))[:-1]
    return {name: SPLITS[bisect.bisect_right(bounds, stable_hash("asterisk-split", root(name)) / 2**64)]
            for name in parent}


def choose(prompts, per_language=None) -> list:
    """At most `per_language` prompts a language: those recorded in the most of the given
    languages first (all of them, so cross-lingual queries have answers), then by a hash of the
    name; the same prompts on every run."""
    if per_language is None:
        return list(prompts)
    languages_of = {}
    for prompt in prompts:
        languages_of.setdefault(prompt["name"], set()).add(prompt["language"])
    order = sorted(languages_of, key=lambda n: (-len(languages_of[n]), stable_hash("asterisk-order", n), n))
    rank = {name: i for i, name in enumerate(order)}
    chosen, count = [], Counter()
    for prompt in sorted(prompts, key=lambda p: (rank[p["name"]], p["language"], p["speaker"])):
        if count[prompt["language"]] < per_language:
            count[prompt["language"]] += 1
            chosen.append(prompt)
    return chosen


def decode(path) -> np.ndarray:
    """The samples of one G.722 file, float32 mono at 16 kHz. ValueError naming the reason."""
    from torchcodec.decoders import AudioDecoder

    try:
        samples = AudioDecoder(str(path), sample_rate=SAMPLING_RATE).get_all_samples().data.numpy().mean(axis=0)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"FFmpeg cannot decode it ({type(error).__name__}: {message})") from None
    if len(samples) < MIN_SECONDS * SAMPLING_RATE:
        raise ValueError(f"{len(samples) / SAMPLING_RATE:.3f} s of audio: not a recorded prompt")
    if not np.isfinite(samples).all():
        raise ValueError("NaN or infinite samples")
    return samples.astype(np.float32)


def _readme(rows, languages) -> str:
    lines = ["# Asterisk core sounds: real read speech for evaluation", "",
             "Studio-read telephone prompts of the Asterisk PBX, from Debian's asterisk-core-sounds-LANG "
             "(transcripts) and asterisk-core-sounds-LANG-g722 (16 kHz G.722 recordings) packages, "
             "decoded to 16 kHz WAV; prompts of one word or sound descriptions left out. "
             "Attribution and licences (from /usr/share/doc/asterisk-core-sounds-en/copyright):", ""]
    for language in languages:
        speakers = sorted({r["speaker"] for r in rows if r["language"] == language})
        recorded_by, licence = VOICES.get(language, ("see the package's copyright file", "see the package's copyright file"))
        lines.append(f"- {language} ({', '.join(speakers)}): recorded by {recorded_by}; licence {licence}")
    lines += ["", "The recordings are unchanged apart from decoding; the transcripts are the packages' own, "
              "with spaces collapsed. Financial contributions to the recordings by Digium, Inc.", ""]
    return "\n".join(lines)


def without_prompts_of(prompts, manifest) -> list:
    """`prompts` less those of another Asterisk import's `manifest` (its manifest.jsonl, or the folder
    holding it): the same prompt names, and any prompt reading the same (`normalise_text`) in a
    language as one of them there. A fine-tuning split that shares no prompt and no text with the
    evaluation set (issue #16 item 4); FileNotFoundError / ValueError naming `manifest`."""
    path = Path(manifest)
    path = path / "manifest.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"--exclude-prompts {manifest}: no {path} (an Asterisk import's folder or manifest.jsonl)")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rows = [row for row in rows if row.get("source") == SOURCE]
        names = {row["group"].removeprefix(f"{SOURCE}:") for row in rows}
        texts = {(row["language"], normalise_text(row["text"])) for row in rows}
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"--exclude-prompts {manifest}: {path} is not a manifest of JSON rows with a group ({error!r})") from None
    if not names:
        raise ValueError(f"--exclude-prompts {manifest}: {path} holds no Asterisk prompt (source {SOURCE!r})")
    return [p for p in prompts if p["name"] not in names and (p["language"], normalise_text(p["text"])) not in texts]


def build_asterisk(output, languages=LANGUAGES, *, min_words: int = 3, per_language=None,
                   fractions=SPLIT_FRACTIONS, root="/", exclude=None):
    """Decode the prompts of `languages` into `output` (layout in the module docstring) and return
    (DatasetDict, skipped): skipped lists (file, reason) of recordings that do not decode, left
    out instead of stopping the run. FileNotFoundError naming the package when one is missing.
    `exclude`: another import's folder or manifest whose prompts are left out (`without_prompts_of`).
    """
    import soundfile

    from .loaders import load_manifest, save_dataset

    output = Path(output)
    prompts = find_prompts(languages, root, min_words)
    if exclude is not None:
        excluded = Path(exclude).resolve()
        if output.resolve() in (excluded, excluded.parent if excluded.is_file() else excluded):
            raise ValueError(f"--output {output} is the import --exclude-prompts {exclude} names: it would be replaced "
                             "by the prompts it does not hold; write the new import elsewhere")
        found = len(prompts)
        prompts = without_prompts_of(prompts, exclude)
        if found and not prompts:
            raise ValueError(f"--exclude-prompts {exclude} leaves none of the {found} Asterisk prompts of at least "
                             f"{min_words} words in {', '.join(languages)}")
    prompts = choose(prompts, per_language)
    if not prompts:
        raise ValueError(f"no Asterisk prompt of at least {min_words} words in {', '.join(languages)}")
    split_of = split_of_prompts(prompts, fractions)
    rows, skipped = [], []
    for prompt in prompts:
        try:
            samples = decode(prompt["path"])
        except ValueError as error:
            skipped.append((str(prompt["path"]), str(error)))
            continue
        audio = Path("clips", prompt["language"], prompt["speaker"], prompt["name"] + ".wav")
        path = output / audio
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
        soundfile.write(temporary, samples, SAMPLING_RATE, subtype="PCM_16", format="WAV")
        os.replace(temporary, path)  # a clip on disk is always whole
        rows.append({"audio": audio.as_posix(), "text": prompt["text"], "language": prompt["language"],
                     "source": SOURCE, "category": prompt["speaker"], "group": f"{SOURCE}:{prompt['name']}",
                     "split": split_of[prompt["name"]], "speaker": prompt["speaker"],
                     "duration": round(len(samples) / SAMPLING_RATE, 3)})
    if not rows:
        path, reason = skipped[0]
        raise ValueError(f"none of the {len(prompts)} Asterisk recordings decode (first: {path}: {reason})")
    texts = {}  # group: {language: text}, whence each row's translations
    for row in rows:
        texts.setdefault(row["group"], {}).setdefault(row["language"], row["text"])
    for row in rows:
        row["translations"] = {k: v for k, v in sorted(texts[row["group"]].items()) if k != row["language"]}
    manifest = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    for name, text in (("manifest.jsonl", manifest), ("README.md", _readme(rows, languages))):
        write_atomically(output / name, text)
    dataset, unreadable = load_manifest(output / "manifest.jsonl")
    if unreadable:
        raise RuntimeError(f"{len(unreadable)} written clips do not decode, e.g. {unreadable[:3]}")
    for split in dataset.values():
        split.info.license = "; ".join(f"{language}: {VOICES.get(language, ('', '?'))[1]}" for language in languages)
        split.info.description = _readme(rows, languages)
    save_dataset(dataset, output / "dataset")
    return dataset, skipped
