"""`clasp features --augment K`: seeded augmented views of the train clips (data_clasp.augment), their
place in the feature cache, and the trainer's one view per clip and epoch (OneViewPerClip)."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import Audio, Dataset, DatasetDict, load_from_disk

from data_clasp.features import MARKER, build_feature_cache
from tiny import features_command, tiny_speech_setup, tone

TRANSFORMS = ("speed", "rir", "noise", "telephone")
RATE = 16000


def only(name):
    """augment()'s probabilities that apply `name` alone."""
    return {n: float(n == name) for n in TRANSFORMS}


def generator(i):
    return torch.Generator().manual_seed(1000 + i)


def power_spectrum(wave, rate=RATE):
    return np.fft.rfftfreq(len(wave), 1 / rate), np.abs(np.fft.rfft(wave)) ** 2


# ---- the transforms -----------------------------------------------------------------------------


def test_a_view_depends_on_the_clip_its_number_and_the_seed_alone():
    from data_clasp.augment import augmented_views

    clip = tone(1.0, seed=3)
    first = augmented_views(clip, RATE, "the cat sat", 3, seed=5)
    torch.randn(100)  # global random state moved: nothing changes
    again = augmented_views(clip.copy(), RATE, "the cat sat", 3, seed=5)
    assert [d for _, d in first] == [d for _, d in again]
    for (a, _), (b, _) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    waves = [w for w, _ in first]
    assert not np.array_equal(waves[0][: len(waves[1])], waves[1][: len(waves[0])])  # view 1 is not view 2
    other_seed = augmented_views(clip, RATE, "the cat sat", 1, seed=6)[0]
    other_clip = augmented_views(clip, RATE, "the dog sat", 1, seed=5)[0]
    for wave, _ in (other_seed, other_clip):
        assert wave.shape != waves[0].shape or not np.array_equal(wave, waves[0])
    assert all(description for _, description in first)  # a view is never the clip as it was


def test_noise_is_added_at_the_drawn_snr_in_its_colour():
    from data_clasp.augment import augment

    clip = tone(2.0, seed=1)
    colours = {}
    for i in range(12):
        noisy, description = augment(clip, RATE, generator(i), only("noise"))
        name, snr, colour = description.split(":")
        assert name == "noise" and snr.endswith("dB") and 5 <= float(snr[:-2]) <= 30
        noise = noisy - clip
        measured = 10 * np.log10((clip ** 2).sum() / (noise ** 2).sum())
        assert abs(measured - float(snr[:-2])) < 1.0, (description, measured)
        f, power = power_spectrum(noise)  # 3 octaves apart: white 0 dB, pink 9, brown 18
        colours.setdefault(colour, []).append(10 * np.log10(power[(f >= 250) & (f < 500)].mean()
                                                            / power[(f >= 2000) & (f < 4000)].mean()))
    assert set(colours) == {"white", "pink", "brown"}
    for colour, expected in {"white": 0, "pink": 9, "brown": 18}.items():
        assert all(abs(tilt - expected) < 3 for tilt in colours[colour]), (colour, colours[colour])


def test_the_telephone_line_keeps_300_to_3400_hz_and_nothing_above_4_khz():
    from data_clasp.augment import augment

    white = (0.1 * np.random.default_rng(0).standard_normal(3 * RATE)).astype(np.float32)
    f, before = power_spectrum(white)
    seen = set()
    for i in range(8):
        line, description = augment(white, RATE, generator(i), only("telephone"))
        seen.add(description)
        assert description in ("telephone", "telephone:mulaw") and len(line) == len(white)
        f, power = power_spectrum(line)
        assert power[f > 4000].sum() < 1e-3 * power.sum(), description
        assert power[f < 150].sum() < 0.01 * power.sum(), description
        band = (f > 500) & (f < 3000)  # inside the pass band the level is kept
        assert 0.5 < power[band].sum() / before[band].sum() < 2, description
    assert seen == {"telephone", "telephone:mulaw"}


def test_speed_perturbation_shortens_the_clip_and_raises_its_pitch_by_the_factor():
    from data_clasp.augment import augment

    clip = np.sin(2 * np.pi * 200 * np.arange(3 * RATE) / RATE).astype(np.float32)
    factors = set()
    for i in range(10):
        fast, description = augment(clip, RATE, generator(i), only("speed"))
        if not description:  # a drawn factor of exactly 1.00 changes nothing and says so
            np.testing.assert_array_equal(fast, clip)
            continue
        factor = float(description.removeprefix("speed:"))
        factors.add(factor)
        assert 0.9 <= factor <= 1.1
        assert abs(len(fast) - len(clip) / factor) <= 2, (description, len(fast))
        f, power = power_spectrum(fast)
        assert abs(f[power.argmax()] - 200 * factor) < 1.0, (description, f[power.argmax()])
    assert len(factors) >= 5 and min(factors) < 0.97 and max(factors) > 1.03


def test_the_synthetic_room_decays_60_db_in_the_drawn_rt60():
    """An impulse through the room is its impulse response: Schroeder's backward-integrated energy
    falls from -5 to -25 dB in a third of RT60 (the T20 estimate of ISO 3382)."""
    from data_clasp.augment import augment

    impulse = np.zeros(RATE, np.float32)
    impulse[0] = 1.0
    for i in range(6):
        response, description = augment(impulse, RATE, generator(i), only("rir"))
        rt60 = float(description.removeprefix("rir:").removesuffix("s"))
        assert 0.2 <= rt60 <= 0.8 and len(response) == len(impulse)
        assert np.isclose(np.linalg.norm(response), 1.0, rtol=1e-4)  # the level is kept
        decay = np.cumsum(response[::-1].astype(np.float64) ** 2)[::-1]
        decay_db = 10 * np.log10(decay / decay[0])
        t20 = (np.argmax(decay_db < -25) - np.argmax(decay_db < -5)) / RATE
        assert abs(3 * t20 - rt60) < 0.15 * rt60, (description, 3 * t20)


def test_a_view_applies_at_least_one_transform():
    from data_clasp.augment import augment

    clip = tone(0.5, seed=2)
    wave, description = augment(clip, RATE, generator(0), {name: 0.0 for name in TRANSFORMS})
    assert description and not np.array_equal(wave[: len(clip)], clip[: len(wave)])


# ---- the feature cache --------------------------------------------------------------------------

TEXTS = ["the cat sat", "le chat est sur la mat", "der hund ist", "el perro", "a red car", "the blue house", "green mat"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    n = len(TEXTS)
    return tiny_speech_setup(tmp_path_factory.mktemp("augment"), TEXTS, [0.4 + 0.1 * i for i in range(n)], [RATE] * n,
                             groups=True)


def counting(model, monkeypatch):
    """Calls of the speech encoder: how many model batches a build computed."""
    calls = []
    original = model.get_speech_frames
    monkeypatch.setattr(model, "get_speech_frames", lambda *a, **k: calls.append(len(a[0])) or original(*a, **k))
    return calls


def test_the_train_split_gets_k_views_per_clip_and_validation_none(setup, tmp_path):
    from data_clasp.augment import augmented_views

    root, data, model, processor = setup
    plain = load_from_disk(build_feature_cache(model, processor, data, str(tmp_path / "plain"), batch_size=2,
                                               chunk_size=2, progress=False))
    cache = build_feature_cache(model, processor, data, str(tmp_path / "k2"), batch_size=2, chunk_size=2,
                                progress=False, augment=2, augment_seed=3)
    augmented = load_from_disk(cache)
    train = augmented["train"].to_dict()
    speech = np.array(train["speech_embeds"])
    assert len(speech) == 15
    assert train["view"] == [0, 1, 2] * 5 and train["clip"] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert train["text"] == [t for t in TEXTS[:5] for _ in range(3)] and train["group"] == train["clip"]
    assert [a == "" for a in train["augmentation"]] == [v == 0 for v in train["view"]]
    # Validation as without augmentation: the same rows, columns and features.
    assert augmented["validation"].column_names == plain["validation"].column_names
    np.testing.assert_array_equal(np.array(augmented["validation"]["speech_embeds"]), np.array(plain["validation"]["speech_embeds"]))
    # View 0 is the clip's own features; view v is the features of data_clasp.augment's view v of the clip.
    np.testing.assert_allclose(speech[::3], np.array(plain["train"]["speech_embeds"]), atol=1e-5)
    row = data["train"][1]
    views = augmented_views(row["audio"]["array"], RATE, row["text"], 2, seed=3)
    assert [d for _, d in views] == train["augmentation"][4:6]
    with torch.no_grad():
        direct = model(**processor(text=[row["text"]] * 2, audio=[w for w, _ in views], sampling_rate=RATE))
    np.testing.assert_allclose(speech[4:6], direct.speech_embeds.numpy(), atol=1e-5)
    spectrogram = np.array(train["spectrogram_embeds"])  # the views' features are not the clip's (float noise: ~1e-6)
    assert (np.abs(spectrogram[4:6] - spectrogram[3]).max(axis=1) > 1e-3).all()

    marker = json.loads((tmp_path / "k2" / MARKER).read_text())
    assert marker["augment"] == 2 and marker["augment_seed"] == 3
    assert marker["rows"] == {"train": 15, "validation": 2}
    assert marker["fingerprint"] != json.loads((tmp_path / "plain" / MARKER).read_text())["fingerprint"]
    assert marker["backbones"] == json.loads((tmp_path / "plain" / MARKER).read_text())["backbones"]

    # Another chunking and batching (another worker's share, a resumed run): the same views.
    other = load_from_disk(build_feature_cache(model, processor, data, str(tmp_path / "k2-other"), batch_size=4,
                                               chunk_size=3, progress=False, augment=2, augment_seed=3))["train"]
    assert list(other["augmentation"]) == train["augmentation"]
    np.testing.assert_allclose(np.array(other["speech_embeds"]), speech, atol=1e-5)


def test_without_augmentation_the_cache_and_its_fingerprint_are_todays(setup, tmp_path):
    """augment=0 writes what a build without the argument writes: the same marker fingerprint (the
    features' own), the same chunk names, no new columns; so older caches stay up to date."""
    import hashlib

    from data_clasp.features import cache_fingerprint

    root, data, model, processor = setup
    default = build_feature_cache(model, processor, data, str(tmp_path / "default"), batch_size=4, chunk_size=4,
                                  progress=False)
    zero = build_feature_cache(model, processor, data, str(tmp_path / "zero"), batch_size=4, chunk_size=4,
                               progress=False, augment=0, augment_seed=9)
    markers = [json.loads(open(os.path.join(c, MARKER)).read()) for c in (default, zero)]
    model_fp = cache_fingerprint(model, processor)["fingerprint"]
    assert markers[0]["fingerprint"] == markers[1]["fingerprint"] == model_fp
    assert "augment" not in markers[1]
    chunk_names = {f"{split}-{start:08d}-" + hashlib.sha256(
        f"{model_fp}/{data[split].select(range(start, min(start + 4, len(data[split]))))._fingerprint}".encode()).hexdigest()[:16]
        + ".arrow" for split in data for start in range(0, len(data[split]), 4)}
    assert set(os.listdir(os.path.join(zero, "chunks"))) == set(os.listdir(os.path.join(default, "chunks"))) == chunk_names
    for split in data:
        a, b = load_from_disk(default)[split], load_from_disk(zero)[split]
        assert a.column_names == b.column_names and "view" not in b.column_names
        assert a.data.table.equals(b.data.table)


def test_another_k_or_seed_rebuilds_the_train_chunks_only(setup, tmp_path, monkeypatch):
    root, data, model, processor = setup
    cache = str(tmp_path / "cache")
    build_feature_cache(model, processor, data, cache, batch_size=8, chunk_size=8, progress=False, augment=1)
    calls = counting(model, monkeypatch)
    build_feature_cache(model, processor, data, cache, batch_size=8, chunk_size=8, progress=False, augment=1)
    assert calls == []  # up to date
    build_feature_cache(model, processor, data, cache, batch_size=8, chunk_size=8, progress=False, augment=2)
    assert sum(calls) == 15  # the train split's 5 clips × 3 views; validation's chunk reused
    assert list(load_from_disk(cache)["train"]["view"]) == [0, 1, 2] * 5
    calls.clear()
    build_feature_cache(model, processor, data, cache, batch_size=8, chunk_size=8, progress=False, augment=2, augment_seed=1)
    assert sum(calls) == 15  # another seed: other views
    calls.clear()
    build_feature_cache(model, processor, data, cache, batch_size=8, chunk_size=8, progress=False)
    assert sum(calls) == 5 and "view" not in load_from_disk(cache)["train"].column_names


def test_a_slowed_down_view_of_a_clip_at_the_encoders_limit_is_cut_there(setup, tmp_path):
    """Speed 0.9 makes a clip 11 % longer: at Whisper's 30 s (here a limit of 0.5 s) the encoder would refuse it."""
    import copy

    root, data, model, processor = setup
    limited = copy.deepcopy(processor)
    limited.feature_extractor.max_samples = RATE // 2
    rows = Dataset.from_dict({"audio": [{"array": tone(0.5, freq=200 + 30 * i, seed=i), "sampling_rate": RATE} for i in range(4)],
                              "text": TEXTS[:4]}).cast_column("audio", Audio(sampling_rate=RATE))
    cache = build_feature_cache(model, limited, DatasetDict({"train": rows}), str(tmp_path / "cache"), progress=False,
                                augment=3, augment_seed=1)
    applied = list(load_from_disk(cache)["train"]["augmentation"])
    assert any("speed:0.9" in a and a.endswith(",cut") for a in applied), applied
    assert not any("speed:1." in a and a.endswith(",cut") for a in applied), applied


def test_clasp_features_augment_command(setup, tmp_path):
    from clasp_cli.main import main

    assert main(features_command(setup, tmp_path) + ["--output", str(tmp_path / "features"), "--augment", "1",
                                                     "--augment-seed", "4"]) == 0
    marker = json.loads((tmp_path / "features" / MARKER).read_text())
    assert (marker["augment"], marker["augment_seed"], marker["rows"]) == (1, 4, {"train": 10, "validation": 2})


def test_a_negative_number_of_copies_is_refused(setup, tmp_path, capsys):
    from clasp_cli.main import main

    root, data, model, processor = setup
    with pytest.raises(ValueError, match="augment=-1"):
        build_feature_cache(model, processor, data, str(tmp_path / "cache"), progress=False, augment=-1)
    with pytest.raises(SystemExit) as error:
        main(["features", "--data", str(tmp_path), "--augment", "-1"])
    assert error.value.code == 2
    assert "argument --augment: '-1'" in capsys.readouterr().err


def test_augmenting_splits_without_train_is_refused(setup, tmp_path):
    """`--augment 2 --splits validation` augmented nothing, silently."""
    root, data, model, processor = setup
    with pytest.raises(ValueError, match=r"augment=2: only the train split is augmented, and the splits \['validation'\]"):
        build_feature_cache(model, processor, data, str(tmp_path / "cache"), splits=["validation"], progress=False, augment=2)
    assert not (tmp_path / "cache" / MARKER).exists()


# ---- the trainer's view of each clip --------------------------------------------------------------


def test_each_epoch_takes_one_view_of_every_clip_and_the_views_change_between_epochs():
    from data_clasp.features import OneViewPerClip

    clips, views = np.repeat(np.arange(40), 3), np.tile(np.arange(3), 40)
    order = np.random.default_rng(0).permutation(len(clips))  # the rows in any order
    split = Dataset.from_dict({
        "speech_embeds": np.stack([np.full(4, 10 * c + v, np.float32) for c, v in zip(clips[order], views[order])]),
        "spectrogram_embeds": np.zeros((120, 3), np.float32), "text_embeds": np.zeros((120, 2), np.float32),
        "clip": clips[order], "view": views[order]})
    rows = OneViewPerClip(split, seed=7)
    assert len(rows) == 40

    def epoch(e):
        rows.set_epoch(e)
        codes = [int(rows[i]["speech_embeds"][0]) for i in range(len(rows))]
        assert sorted(c // 10 for c in codes) == list(range(40))  # every clip once
        return [c % 10 for c in codes]

    first, second = epoch(0), epoch(1)
    assert first != second and epoch(0) == first  # seeded by the epoch, drawn again the same
    assert OneViewPerClip(split, seed=7).index.tolist() == rows.index.tolist()  # by (seed, epoch) alone
    assert set(first) == {0, 1, 2}  # the original is one of the views
    assert sorted(int(rows.originals[i]["speech_embeds"][0]) % 10 for i in range(len(rows.originals))) == [0] * 40
    with pytest.raises(ValueError, match="clasp features --augment"):
        OneViewPerClip(split.remove_columns(["view"]))
