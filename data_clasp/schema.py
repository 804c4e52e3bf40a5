"""The one speech–text dataset schema every loader and the synthesiser produce.

A `datasets.DatasetDict` with the splits train / validation / test, each with these columns:

    audio         datasets Audio, decoded at 16 kHz (files of any rate are resampled on read)
    text          what is said, as written (cased, punctuated)
    language      ISO 639 code of the speech and of `text` ("en", "fr", "zh")
    source        where the row comes from ("speechbrown", "commonvoice", "espeak:django", ...)
    category      finer origin when known (Brown category, Bible book, Django app), else ""
    translations  the same sentence in other languages, as a list of {language, text} structs
    group         rows that say the same thing share it; splits never share a group

`translations` is a list of structs rather than a dict because Arrow has no map with free
keys that survives `save_to_disk`/`push_to_hub` cleanly: a dict column becomes a struct with one
field per language ever seen, mostly null. Use `translations_dict(row)` to get a plain dict.

`group` is what keeps evaluation honest: the same text spoken twice, or a sentence and its
translation, must not sit on both sides of a train/test boundary, so splits are cut by group.
"""

import hashlib
import unicodedata

from datasets import Audio, Features, List, Value

SAMPLING_RATE = 16_000
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

FEATURES = Features(
    {
        "audio": Audio(sampling_rate=SAMPLING_RATE),
        "text": Value("string"),
        "language": Value("string"),
        "source": Value("string"),
        "category": Value("string"),
        "translations": List({"language": Value("string"), "text": Value("string")}),
        "group": Value("string"),
    }
)
COLUMNS = tuple(FEATURES)


def normalise_text(text: str) -> str:
    """Case, punctuation and spacing removed: two texts that read aloud the same compare equal."""
    kept = (c for c in unicodedata.normalize("NFKC", text).casefold() if unicodedata.category(c)[0] not in "PS")
    return " ".join("".join(kept).split())


def text_group(text: str) -> str:
    """The default group: a hash of the normalised text, so repeated sentences fall together."""
    return "text:" + hashlib.sha1(normalise_text(text).encode()).hexdigest()[:16]


def stable_hash(*parts) -> int:
    """A hash that, unlike `hash()`, is the same in every process and on every run."""
    return int.from_bytes(hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()[:8], "big")


# `clasp data synth --sources` names that read corpora of other names (data_clasp.corpora.BIBLES).
CORPUS_ALIASES = {"bible": ("kjv", "sparv")}


def corpus_of(source: str) -> str:
    """The text corpus of a row's `source`: 'espeak:fortunes-de' -> 'fortunes-de' (the voice engine
    before the ':' dropped); a source without an engine is its own corpus ('speechbrown')."""
    return source.partition(":")[2] or source


def corpora_matching(names, present) -> set:
    """The corpora of `present` that `names` pick: a name picks a corpus equal to it or starting with it
    and a '-' ('fortunes' picks 'fortunes-de' and 'fortunes-br'), or one it stands for in CORPUS_ALIASES
    ('bible' picks 'kjv' and 'sparv', as `clasp data synth --sources bible` reads them). Raises ValueError naming the names
    that pick none, with the corpora present."""
    present = sorted(set(present))
    picked = {name: {c for c in present if c == name or c.startswith(name + "-") or c in CORPUS_ALIASES.get(name, ())}
              for name in names}
    unknown = [name for name, corpora in picked.items() if not corpora]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: no such corpus here; the corpora are {', '.join(present) or 'none'}")
    return set().union(*picked.values())


def split_of_groups(groups, fractions=SPLIT_FRACTIONS) -> dict:
    """Assign each group to a split, 80/10/10 by count of groups, in a fixed pseudo-random order.

    The order is a hash of the group name alone, so the same groups always land the same way;
    the cut is by rank rather than by hash range so that even a few groups give non-empty
    validation and test splits.
    """
    ordered = sorted(set(groups), key=lambda g: (stable_hash("split", g), g))
    n = len(ordered)
    n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
    n_validation = max(1, round(n * fractions[1])) if n >= 3 else 0
    n_train = n - n_validation - n_test
    return {g: SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_validation else SPLITS[2]
            for i, g in enumerate(ordered)}


def translations_list(translations) -> list:
    """{language: text} (or an already converted list) -> the stored list of structs, sorted."""
    if not translations:
        return []
    if isinstance(translations, dict):
        return [{"language": k, "text": v} for k, v in sorted(translations.items())]
    return sorted(({"language": t["language"], "text": t["text"]} for t in translations), key=lambda t: t["language"])


def translations_dict(row) -> dict:
    """The `translations` of a row as a plain {language: text} dict."""
    return {t["language"]: t["text"] for t in row["translations"]}
