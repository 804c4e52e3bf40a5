"""`clasp data import --asterisk`: Debian's Asterisk voice prompts as real-speech evaluation data.

Most tests build a fake Debian tree in a temporary folder (G.722 files made by the ffmpeg CLI,
gzipped transcript files); the last reads the packages installed on this machine (`make test`
installs them).
"""

import gzip
import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk

from clasp_cli.main import main
from data_clasp.asterisk import choose, decode, find_prompts, split_of_prompts

SOUNDS = "usr/share/asterisk/sounds"
DOCS = "usr/share/doc"
EN = """; Core Asterisk Sounds in English

hello-world: Hello   there,  dear world.
vm-login: Comedian Mail. Mailbox?
short: Goodbye now.
beep: [this is a simple beep tone]
silence/1: (1 second of silence)
digits/1: one
digits/press-one: Press one for sales.
no-recording: This prompt was never recorded.
same-a: You are now muted.
same-b: You are now muted.
broken: This file is broken here.
hello-world: A second line for the same name.
"""
# With a byte-order mark, as the Italian file has.
FR = """\ufeff; Core Asterisk Sounds in French
hello-world: Bonjour à vous, cher monde.
vm-login: Messagerie vocale, votre boîte.
digits/press-one: Appuyez sur un pour les ventes.
same-a: Votre micro est coupé.
same-b: Vous êtes maintenant muet.
fr-only: Seulement en français ici.
"""
SECONDS = {"hello-world": 1.5, "vm-login": 1.0, "digits/press-one": 0.75}  # others: 0.5 s


def g722(path: Path, seconds: float, frequency: int = 440):
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=frequency={frequency}:duration={seconds}", "-ar", "16000", "-c:a", "g722", "-f", "g722",
                    str(path)], check=True)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """One G.722 file of each length, copied into every fake tree (ffmpeg runs once a length)."""
    folder = tmp_path_factory.mktemp("g722")
    for seconds in {*SECONDS.values(), 0.5}:
        g722(folder / f"{seconds}.g722", seconds)
    return folder


@pytest.fixture
def fake_root(tmp_path, recordings):
    """A root with asterisk-core-sounds-{en,fr} and their -g722 packages unpacked."""
    root = tmp_path / "root"
    voices = {"en": ("en_US_f_Allison", EN, ["hello-world", "vm-login", "short", "beep", "silence/1", "digits/1",
                                               "digits/press-one", "same-a", "same-b", "not-transcribed"]),
              "fr": ("fr_CA_f_June", FR, ["hello-world", "vm-login", "digits/press-one", "same-a", "same-b", "fr-only"])}
    for language, (voice, transcripts, names) in voices.items():
        for name in names:
            target = root / SOUNDS / voice / f"{name}.g722"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(recordings / f"{SECONDS.get(name, 0.5)}.g722", target)
        docs = root / DOCS / f"asterisk-core-sounds-{language}"
        docs.mkdir(parents=True)
        (docs / f"core-sounds-{language}.txt.gz").write_bytes(gzip.compress(transcripts.encode("utf-8")))
    (root / SOUNDS / "en_US_f_Allison" / "broken.g722").write_bytes(b"")  # FFmpeg decodes no frame from it
    (root / SOUNDS / "en").symlink_to(root / SOUNDS / "en_US_f_Allison")  # Debian's alternatives link
    return root


def test_pairs_each_recording_with_its_transcript_and_keeps_prompts_of_three_words(fake_root):
    found = {(p["language"], p["name"], p["speaker"], p["text"]) for p in find_prompts(["en", "fr"], fake_root)}
    assert found == {
        ("en", "hello-world", "en_US_f_Allison", "Hello there, dear world."),  # spaces collapsed, first line wins
        ("en", "vm-login", "en_US_f_Allison", "Comedian Mail. Mailbox?"),
        ("en", "digits/press-one", "en_US_f_Allison", "Press one for sales."),
        ("en", "same-a", "en_US_f_Allison", "You are now muted."),
        ("en", "same-b", "en_US_f_Allison", "You are now muted."),
        ("en", "broken", "en_US_f_Allison", "This file is broken here."),
        ("fr", "hello-world", "fr_CA_f_June", "Bonjour à vous, cher monde."),
        ("fr", "vm-login", "fr_CA_f_June", "Messagerie vocale, votre boîte."),
        ("fr", "digits/press-one", "fr_CA_f_June", "Appuyez sur un pour les ventes."),
        ("fr", "same-a", "fr_CA_f_June", "Votre micro est coupé."),
        ("fr", "same-b", "fr_CA_f_June", "Vous êtes maintenant muet."),
        ("fr", "fr-only", "fr_CA_f_June", "Seulement en français ici."),
    }
    # Shorter prompts come back when asked for; sound descriptions never do.
    names = {p["name"] for p in find_prompts(["en"], fake_root, min_words=1)}
    assert {"short", "digits/1"} <= names and not names & {"beep", "silence/1", "no-recording", "not-transcribed"}


def test_import_writes_clips_manifest_and_dataset_shared_groups_same_splits_bad_file_named(fake_root, tmp_path, capsys):
    output = tmp_path / "asterisk"
    code = main(["data", "import", "--asterisk", "--languages", "en,fr", "--asterisk-root", str(fake_root),
                 "--output", str(output)])
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    assert "broken.g722" in stderr and "skipped" in stderr  # named, and the run went on

    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    by_key = {(r["language"], r["group"]): r for r in rows}
    assert len(by_key) == len(rows) == 11  # 12 prompts, the broken one left out
    assert ("en", "asterisk:broken") not in by_key
    for name, seconds in SECONDS.items():  # each clip is its own recording, decoded at 16 kHz
        for language in ("en", "fr"):
            assert by_key[(language, f"asterisk:{name}")]["duration"] == pytest.approx(seconds, abs=0.01)
    hello = by_key[("fr", "asterisk:hello-world")]
    assert hello["source"] == "asterisk" and hello["speaker"] == "fr_CA_f_June"
    assert hello["translations"] == {"en": "Hello there, dear world."}

    # The same prompt is one group in both languages and lies in one split; so do prompts that read the same.
    split_of = defaultdict(set)
    for r in rows:
        split_of[r["group"]].add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert split_of["asterisk:same-a"] == split_of["asterisk:same-b"]
    assert {r["split"] for r in rows} <= {"validation", "test"}

    dataset = load_from_disk(str(output / "dataset"))
    assert len(dataset["train"]) == 0 and len(dataset["validation"]) + len(dataset["test"]) == 11
    for split in ("validation", "test"):
        part = dataset[split]
        for row in part:
            assert row["group"] in split_of and split_of[row["group"]] == {split}
            assert row["category"] == {"en": "en_US_f_Allison", "fr": "fr_CA_f_June"}[row["language"]]
        assert "CC-BY-SA-3.0" in part.info.license
    clip = next(r for s in ("validation", "test") for r in dataset[s] if r["group"] == "asterisk:hello-world")["audio"]
    samples = clip.get_all_samples()
    assert samples.sample_rate == 16_000 and samples.data.shape == (1, 24_000)
    readme = (output / "README.md").read_text(encoding="utf-8")
    assert "June Wallack" in readme and "CC-BY-SA-3.0" in readme


def test_splits_depend_on_the_prompt_name_only_and_are_prompt_disjoint():
    prompts = [{"name": f"prompt-{i}", "language": language, "text": f"{language} text number {i}"}
               for i in range(2000) for language in ("en", "fr")]
    split_of = split_of_prompts(prompts)
    counts = Counter(split_of.values())
    assert set(counts) == {"validation", "test"} and 900 < counts["validation"] < 1100
    # The same prompt gets the same split whichever languages or prompts are read.
    assert split_of_prompts(prompts[::2][:500]) == {f"prompt-{i}": split_of[f"prompt-{i}"] for i in range(500)}
    seventy = split_of_prompts(prompts, fractions=(0.1, 0.2, 0.7))
    assert 0.65 < Counter(seventy.values())["test"] / 2000 < 0.75 and Counter(seventy.values())["train"] > 150
    with pytest.raises(ValueError, match="add up to 1"):
        split_of_prompts(prompts, fractions=(0.5, 0.6, 0.0))


def test_per_language_takes_prompts_recorded_in_every_language_first(fake_root):
    prompts = find_prompts(["en", "fr"], fake_root)
    chosen = choose(prompts, per_language=3)
    assert Counter(p["language"] for p in chosen) == {"en": 3, "fr": 3}
    in_both = {"hello-world", "vm-login", "digits/press-one", "same-a", "same-b"}
    assert {p["name"] for p in chosen} <= in_both
    assert {p["name"] for p in chosen if p["language"] == "en"} == {p["name"] for p in chosen if p["language"] == "fr"}
    assert choose(list(reversed(prompts)), per_language=3) == chosen  # deterministic


@pytest.mark.parametrize("remove, package", [(f"{DOCS}/asterisk-core-sounds-fr", "asterisk-core-sounds-fr"),
                                             (f"{SOUNDS}/fr_CA_f_June", "asterisk-core-sounds-fr-g722")])
def test_a_missing_package_is_named_with_the_command_that_installs_it(fake_root, tmp_path, capsys, remove, package):
    shutil.rmtree(fake_root / remove)
    output = tmp_path / "out"
    code = main(["data", "import", "--asterisk", "--languages", "en,fr", "--asterisk-root", str(fake_root),
                 "--output", str(output)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert f"{package} is not installed: apt-get install {package}" in stderr
    assert not output.exists()  # checked before anything is written


def test_installed_packages_have_plausible_prompt_counts_and_decode_to_16khz_mono():
    """The real asterisk-core-sounds packages (installed by `make test`): about 230-310 prompts of
    three words or more a language, about 200 in all five."""
    prompts = find_prompts()
    counts = Counter(p["language"] for p in prompts)
    languages_of = defaultdict(set)
    for p in prompts:
        languages_of[p["name"]].add(p["language"])
    in_all = sum(len(v) == 5 for v in languages_of.values())
    hours = sum(p["path"].stat().st_size for p in prompts) / 8000 / 3600  # G.722: 64 kbit/s
    print(f"asterisk prompts of >= 3 words: {dict(sorted(counts.items()))}; in all five: {in_all}; {hours:.2f} h")
    assert set(counts) == {"en", "es", "fr", "it", "ru"}
    assert all(200 <= n <= 350 for n in counts.values()), counts
    assert 180 <= in_all <= min(counts.values())
    assert 1.4 < hours < 2.0
    clip = next(p for p in prompts if p["language"] == "en" and p["name"] == "vm-login")
    assert clip["text"] == "Comedian Mail. Mailbox?"
    from torchcodec.decoders import AudioDecoder

    stream = AudioDecoder(str(clip["path"])).metadata
    assert (stream.sample_rate, stream.num_channels, stream.codec) == (16_000, 1, "adpcm_g722")
    samples = decode(clip["path"])
    assert samples.ndim == 1 and samples.dtype == np.float32 and np.isfinite(samples).all()
    assert 0.5 < len(samples) / 16_000 < 5 and 0.05 < np.abs(samples).max() <= 1


def test_exclude_prompts_gives_a_fine_tuning_split_sharing_no_prompt_or_text_with_the_evaluation_set(
        fake_root, tmp_path, capsys):
    evaluation, finetune = tmp_path / "eval", tmp_path / "finetune"
    assert main(["data", "import", "--asterisk", "--languages", "en,fr", "--asterisk-root", str(fake_root),
                 "--per-language", "3", "--output", str(evaluation)]) == 0
    assert main(["data", "import", "--asterisk", "--languages", "en,fr", "--asterisk-root", str(fake_root),
                 "--split-fractions", "1,0,0", "--exclude-prompts", str(evaluation), "--output", str(finetune)]) == 0
    capsys.readouterr()
    read = lambda folder: [json.loads(line) for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    held, tuned = read(evaluation), read(finetune)
    held_names = {r["group"] for r in held}
    assert held_names == {"asterisk:hello-world", "asterisk:digits/press-one", "asterisk:same-b"}  # by the hash order
    # Every other decodable prompt, in train; but same-a in English, which reads "You are now muted." as same-b does.
    assert {(r["language"], r["group"]) for r in tuned} == {
        ("en", "asterisk:vm-login"), ("fr", "asterisk:vm-login"), ("fr", "asterisk:same-a"), ("fr", "asterisk:fr-only")}
    assert {r["split"] for r in tuned} == {"train"}
    assert not {(r["language"], r["text"]) for r in tuned} & {(r["language"], r["text"]) for r in held}
    assert len(load_from_disk(str(finetune / "dataset"))["train"]) == 4


@pytest.mark.parametrize("make, message", [(lambda p: None, "no .*manifest.jsonl"),
                                           (lambda p: p.mkdir() or (p / "manifest.jsonl").write_text(
                                               json.dumps({"group": "x:1", "source": "espeak:kjv", "language": "en",
                                                           "text": "a b c"}) + "\n"), "holds no Asterisk prompt")])
def test_exclude_prompts_names_a_folder_that_is_no_asterisk_import(fake_root, tmp_path, capsys, make, message):
    other = tmp_path / "other"
    make(other)
    code = main(["data", "import", "--asterisk", "--languages", "en", "--asterisk-root", str(fake_root),
                 "--exclude-prompts", str(other), "--output", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert code == 2 and "--exclude-prompts" in stderr and str(other) in stderr
    assert re.search(message, stderr)
    assert not (tmp_path / "out").exists()
    code = main(["data", "import", "--manifest", "m.jsonl", "--exclude-prompts", str(other), "--output", str(tmp_path / "x")])
    assert code == 2 and "needs --asterisk" in capsys.readouterr().err


def test_exclude_prompts_refuses_to_overwrite_the_import_it_names_and_says_when_nothing_is_left(fake_root, tmp_path, capsys):
    evaluation = tmp_path / "eval"
    assert main(["data", "import", "--asterisk", "--languages", "fr", "--asterisk-root", str(fake_root),
                 "--output", str(evaluation)]) == 0
    before = (evaluation / "manifest.jsonl").read_text(encoding="utf-8")
    capsys.readouterr()
    for exclude in (evaluation, evaluation / "manifest.jsonl"):
        code = main(["data", "import", "--asterisk", "--languages", "fr", "--asterisk-root", str(fake_root),
                     "--split-fractions", "1,0,0", "--exclude-prompts", str(exclude), "--output", str(evaluation)])
        assert code == 2 and "write the new import elsewhere" in capsys.readouterr().err
    assert (evaluation / "manifest.jsonl").read_text(encoding="utf-8") == before  # untouched
    code = main(["data", "import", "--asterisk", "--languages", "fr", "--asterisk-root", str(fake_root),
                 "--exclude-prompts", str(evaluation), "--output", str(tmp_path / "rest")])
    assert code == 2 and f"--exclude-prompts {evaluation} leaves none of the 6 Asterisk prompts" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("not json\n")
    code = main(["data", "import", "--asterisk", "--languages", "fr", "--asterisk-root", str(fake_root),
                 "--exclude-prompts", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "x")])
    assert code == 2 and "bad.jsonl is not a manifest of JSON rows" in capsys.readouterr().err
