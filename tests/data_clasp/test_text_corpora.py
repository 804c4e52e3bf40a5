import gzip
import shutil
import struct
import zlib

import pytest

from data_clasp import corpora
from data_clasp.corpora import (Sentence, bible_sentences, catalogue_sentences, clean_interface_string,
                                fortune_sentences, load_sentences, merge_groups, read_po, read_ztext)


def test_read_po_keeps_translated_singular_entries(french_catalogue):
    entries = read_po(french_catalogue)
    msgids = [msgid for _, msgid, _ in entries]
    assert "The password is too similar to the username." in msgids  # continued lines joined
    assert "This entry is still fuzzy here." not in msgids
    assert "One item was changed today." not in msgids  # plural forms carry %(count)s
    assert ("button", "<strong>Save</strong> all of your changes.",
            "<strong>Enregistrer</strong> toutes vos modifications.") in entries
    assert all(msgid for _, msgid, _ in entries)  # the header (empty msgid) is not an entry


def test_clean_interface_string():
    assert clean_interface_string("Delete %(name)s now?") is None
    assert clean_interface_string("Page {0} of {1} pages") is None
    assert clean_interface_string("Log out") is None  # fewer than three words
    assert clean_interface_string("<b>Note:</b> this&nbsp;cannot be undone.") == "Note: this cannot be undone."
    assert clean_interface_string(" ".join(["word"] * 48)) is None


def test_catalogue_sentences_are_parallel(tmp_path, fake_wheel):
    sentences = merge_groups(catalogue_sentences("django", fake_wheel(tmp_path)))
    by_language = {}
    for s in sentences:
        by_language.setdefault(s.language, {})[s.text] = s
    assert set(by_language) == {"en", "fr", "de"}
    english = by_language["en"]["The password is too similar to the username."]
    assert by_language["fr"]["Le mot de passe est trop semblable au nom d’utilisateur."].group == english.group
    assert by_language["de"]["Das Passwort ist dem Benutzernamen zu ähnlich."].group == english.group
    assert english.category == "django.contrib.admin" and english.source == "django"
    assert not any("%" in s.text or "<" in s.text for s in sentences)


def test_merge_groups_joins_groups_that_share_a_text():
    merged = merge_groups([
        Sentence("en", "Save your changes now.", "a", "", "g1"),
        Sentence("fr", "Enregistrez vos modifications.", "a", "", "g1"),
        Sentence("en", "Store your changes now.", "b", "", "g2"),
        Sentence("fr", "Enregistrez vos modifications !", "b", "", "g2"),  # same text, read aloud
        Sentence("en", "Something else entirely here.", "b", "", "g3"),
    ])
    assert len(merged) == 4  # the repeated French text is kept once
    groups = {s.text: s.group for s in merged}
    assert groups["Save your changes now."] == groups["Store your changes now."] != groups["Something else entirely here."]


def test_fortunes_drop_attributions_and_prefer_utf8(tmp_path):
    folder = tmp_path / "usr/share/games/fortunes/de"
    folder.mkdir(parents=True)
    text = ("Die Zeit ist der beste Lehrer.\nLeider tötet sie ihre Schüler.\n\t\t-- Sprichwort\n%\n"
            "A: Wer ist da?\nB: Niemand.\n%\nKurz.\n%\n"
            "Wer andern eine Grube gräbt, fällt selbst hinein.\n\t-- Jemand (1800-1900)\n\tDichter. 3137.\n%\n")
    (folder / "sprichworte.u8").write_text(text, encoding="utf-8")
    (folder / "sprichworte").write_bytes(text.encode("latin-1", "replace"))
    (folder / "sprichworte.dat").write_bytes(b"\x00\x01")
    sentences = fortune_sentences("fortunes-de", tmp_path)
    assert [s.text for s in sentences] == ["Die Zeit ist der beste Lehrer. Leider tötet sie ihre Schüler.",
                                           "Wer andern eine Grube gräbt, fällt selbst hinein."]
    assert {s.category for s in sentences} == {"fortunes-de/sprichworte"} and {s.language for s in sentences} == {"de"}


def write_ztext(folder, verses):
    """A SWORD zText testament: one zlib block, a 10-byte index entry per verse."""
    folder.mkdir(parents=True, exist_ok=True)
    block, index = b"", b""
    for verse in verses:
        raw = verse.encode()
        index += struct.pack("<IIH", 0, len(block), len(raw))
        block += raw
    packed = zlib.compress(block)
    (folder / "ot.bzz").write_bytes(packed)
    (folder / "ot.bzs").write_bytes(struct.pack("<III", 0, len(packed), len(block)))
    (folder / "ot.bzv").write_bytes(index)
    for ext in ("bzz", "bzs", "bzv"):  # an empty New Testament
        (folder / f"nt.{ext}").write_bytes(b"")


def test_bibles_align_by_verse(tmp_path):
    kjv = ['', '<div osisID="Gen" type="book"/> <title type="main">GENESIS</title>',
           'In the <w lemma="strong:H7225">beginning</w> God created the heaven and the earth.',
           'And the earth was without form, and void<note>a footnote</note>.']
    sparv = ['', '<div osisID="Gen" type="book"/>', '<w lemma="x">EN el principio</w> crió Dios los cielos y la tierra.',
             'Y la tierra estaba desordenada y vacía.']
    write_ztext(tmp_path / "usr/share/sword/modules/texts/ztext/engKJV2006eb", kjv)
    write_ztext(tmp_path / "usr/share/sword/modules/texts/ztext/spaRV1909eb", sparv)
    english = bible_sentences("sword-text-kjv", tmp_path)
    spanish = bible_sentences("sword-text-sparv", tmp_path)
    assert [s.text for s in english] == ["In the beginning God created the heaven and the earth.",
                                        "And the earth was without form, and void."]
    assert spanish[0].text == "En el principio crió Dios los cielos y la tierra."
    assert [s.unit for s in english] == [s.unit for s in spanish] and english[0].category == "Gen"
    assert read_ztext(tmp_path / "usr/share/sword/modules/texts/ztext/engKJV2006eb", "ot")[0] == ""


def test_load_sentences_reads_cached_wheels_offline(tmp_path, fake_wheel, monkeypatch):
    fake_wheel(tmp_path / "wheels")
    monkeypatch.setattr(corpora.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no download")))
    first = load_sentences(("django",), tmp_path)
    assert {s.language for s in first} == {"en", "fr", "de"}
    assert load_sentences(("django",), tmp_path) == first  # second time from the cache
    assert len(list(tmp_path.glob("sentences-*.jsonl"))) == 1


MAN_PAGE = r""".\" -*- coding: UTF-8 -*-
.TH FROB 1 "Septembre 2022" "frob 1.0" "Commandes de l'utilisateur"
.SH NOM
frob \- tourner les boutons du tableau de bord
.SH SYNOPSIS
\fBfrob\fP [\fI\,OPTION\/\fP]... \fI\,FICHIER\/\fP
.PP
Frob tourne les boutons du tableau.
.SH DESCRIPTION
.PP
Ce programme tourne les boutons du tableau de bord\ ! Il garde les réglages
d'une session à l'autre, comme le veut M.\& Dupont.
.PP
La configuration est lue dans /etc/frob.conf au démarrage.
.PP
Utilisez \-\-force pour ignorer les erreurs de lecture.
.PP
Each paragraph stays English until translated.
.PP
Les boutons (les gros aussi.
Ils tournent.
.TP
\fB\-v\fP, \fB\-\-verbose\fP
Afficher chaque bouton avant de le tourner.
.PP
Le fichier \fIFICHIER\fP contient la liste des boutons.
.SH EXEMPLE
.nf
Les boutons sont tournés.
Les boutons sont tournés encore.
.fi
"""


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff to render man pages")
def test_manpages_keep_the_running_text_sentences(tmp_path):
    folder = tmp_path / "usr/share/man/fr/man1"
    folder.mkdir(parents=True)
    (folder / "frob.1.gz").write_bytes(gzip.compress(MAN_PAGE.encode("utf-8")))
    (folder / "frotz.1.gz").write_bytes(gzip.compress(b".so man1/frob.1\n"))  # an alias: not rendered again
    sentences = corpora.manpage_sentences("manpages-fr", tmp_path)
    # Not the name, the synopsis, the path, the option, English, the option list, italics or code.
    assert [s.text for s in sentences] == ["Ce programme tourne les boutons du tableau de bord !",
                                           "Il garde les réglages d'une session à l'autre, comme le veut M. Dupont."]
    assert {(s.language, s.source, s.category) for s in sentences} == {("fr", "manpages-fr", "manpages-fr/frob.1")}
    assert sentences[0].unit == "text:ce programme tourne les boutons du tableau de bord"


def test_split_sentences_keeps_abbreviations():
    assert corpora.split_sentences("Siehe z. B. Dateien (z.B. Texte). Und dann? Ja.") == [
        "Siehe z. B. Dateien (z.B. Texte).", "Und dann?", "Ja."]


def test_manpages_are_a_source_but_not_a_default(tmp_path, monkeypatch):
    from argparse import Namespace

    from clasp_cli.data_command import _sources

    assert corpora.DEFAULT_SOURCES == ("django", "sphinx", "wagtail", "lee", "bible", "fortunes")
    assert _sources(Namespace(sources=None)) == corpora.DEFAULT_SOURCES
    assert "manpages" in corpora.SOURCES
    asked = []
    monkeypatch.setattr(corpora, "fetch_wheel", lambda name, cache: tmp_path / f"{name}.whl")
    monkeypatch.setattr(corpora, "fetch_debian", lambda package, inside, cache: asked.append(package))
    monkeypatch.setattr(corpora, "manpage_sentences", lambda *a: (_ for _ in ()).throw(AssertionError("read")))
    for name in ("django", "sphinx", "wagtail", "gensim"):
        (tmp_path / f"{name}.whl").write_bytes(b"")
    monkeypatch.setattr(corpora, "catalogue_sentences", lambda name, wheel: [])
    monkeypatch.setattr(corpora, "lee_sentences", lambda wheel: [])
    assert load_sentences(cache=tmp_path) == []
    assert "fortunes-de" in asked and not [p for p in asked if p.startswith("manpages")]
    asked.clear()
    monkeypatch.setattr(corpora.shutil, "which", lambda name: f"/usr/bin/{name}")  # groff or not
    assert load_sentences(("manpages",), tmp_path) == []  # none to be had
    assert "manpages-fr" in asked and "manpages-pt-br" in asked
