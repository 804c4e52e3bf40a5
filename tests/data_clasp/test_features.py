import json
import os

import numpy as np
import pytest
import torch
from datasets import DatasetDict, load_from_disk

from data_clasp.features import MARKER, build_feature_cache
from tiny import features_command, launch, tiny_speech_setup

TEXTS = ["the cat sat", "le chat est sur la mat", "der hund ist", "el perro", "a red car", "the blue house", "green mat"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    n = len(TEXTS)
    return tiny_speech_setup(tmp_path_factory.mktemp("features"), TEXTS, [0.3 + 0.15 * i for i in range(n)],
                             [22050 if i % 2 else 16000 for i in range(n)])


def test_cache_holds_the_models_own_branch_features(setup):
    root, data, model, processor = setup
    cache = build_feature_cache(model, processor, data, str(root / "cache"), batch_size=2, chunk_size=3, progress=False)
    features = load_from_disk(cache)
    assert set(features) == {"train", "validation"} and len(features["train"]) == 5
    assert {"speech_embeds", "spectrogram_embeds", "text_embeds", "text", "language"} <= set(features["train"].column_names)
    row = data["train"][3]
    with torch.no_grad():
        inputs = processor(text=[row["text"]], audio=[row["audio"]["array"]], sampling_rate=16000)
        out = model(**inputs)
    cached = features["train"].with_format("torch")[3]
    torch.testing.assert_close(cached["speech_embeds"], out.speech_embeds[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached["spectrogram_embeds"], out.spectrogram_embeds[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cached["text_embeds"], out.text_embeds[0], atol=1e-5, rtol=1e-4)
    assert json.loads((root / "cache" / MARKER).read_text())["rows"] == {"train": 5, "validation": 2}


def test_an_empty_split_is_left_out_of_the_cache(setup, tmp_path):
    """`clasp data synth --from-manifest --splits train` makes empty validation and test splits;
    the cache of that dataset failed ("Unable to concatenate an empty list of datasets")."""
    root, data, model, processor = setup
    with_empty = DatasetDict({"train": data["train"], "validation": data["validation"].select([]), "test": data["validation"]})
    cache = load_from_disk(build_feature_cache(model, processor, with_empty, str(tmp_path / "cache"), progress=False))
    assert {split: len(rows) for split, rows in cache.items()} == {"train": 5, "test": 2}
    assert json.loads((tmp_path / "cache" / MARKER).read_text())["rows"] == {"train": 5, "test": 2}
    with pytest.raises(ValueError, match="every split is empty"):
        build_feature_cache(model, processor, DatasetDict({"train": data["train"].select([])}), str(tmp_path / "none"))


def test_second_run_is_free_and_an_interrupted_run_resumes(setup, monkeypatch):
    root, data, model, processor = setup
    cache = str(root / "cache2")
    build_feature_cache(model, processor, data, cache, batch_size=2, chunk_size=2, progress=False)
    first = load_from_disk(cache)["train"]["speech_embeds"]

    calls = []
    original = model.get_speech_frames
    monkeypatch.setattr(model, "get_speech_frames", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_feature_cache(model, processor, data, cache, batch_size=2, chunk_size=2, progress=False)
    assert calls == []  # up to date: nothing recomputed

    # As if killed before the end: the marker and one chunk are gone; only that chunk is recomputed.
    os.remove(os.path.join(cache, MARKER))
    chunk = sorted(p for p in os.listdir(os.path.join(cache, "chunks")) if p.startswith("train-00000002"))[0]
    os.remove(os.path.join(cache, "chunks", chunk))
    build_feature_cache(model, processor, data, cache, batch_size=2, chunk_size=2, progress=False)
    assert len(calls) == 1  # one model batch: the two rows of the missing chunk
    np.testing.assert_allclose(np.array(load_from_disk(cache)["train"]["speech_embeds"]), np.array(first), atol=1e-6)


def test_cached_frames_reproduce_the_models_attention_pooled_embeddings(setup):
    """The cache keeps the speech frames (float16); a head that pools them by attention, fed from the
    cache through CachedFeatures, gives the embeddings it computes from the audio itself."""
    from data_clasp.features import CachedFeatures
    from modeling_clasp import ClaspModel

    root, data, model, processor = setup
    cache = build_feature_cache(model, processor, data, str(root / "cache3"), batch_size=3, chunk_size=2, progress=False)
    train = load_from_disk(cache)["train"]
    config = model.config.to_dict() | {"speech_pooling": "attention", "speech_pooling_heads": 2}
    torch.manual_seed(1)
    attentive = ClaspModel(type(model.config).from_dict(config)).eval()
    attentive.load_state_dict(model.state_dict(), strict=False)  # same backbones, a fresh pooler and head

    rows = CachedFeatures(train, frames=True)
    batch = rows.collate([rows[i] for i in range(len(rows))])
    assert batch["speech_frames"].dtype == torch.float16 and "speech_embeds" not in batch
    lengths = (batch["speech_frame_weights"] > 0).sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # clips of different lengths, padded per batch
    with torch.no_grad():
        from_cache = attentive(**batch).audio_embeds
        clips = [row["audio"]["array"] for row in data["train"]]
        direct = attentive.get_audio_features(**processor(audio=clips, sampling_rate=16000)).pooler_output
    torch.testing.assert_close(from_cache, direct, atol=2e-3, rtol=0)  # float16 frames
    mean_rows = CachedFeatures(train, frames=False)
    torch.testing.assert_close(mean_rows.columns["speech_embeds"],
                               torch.nn.functional.normalize(model.pool_speech(batch["speech_frames"].float(),
                                                                               batch["speech_frame_weights"]), dim=-1),
                               atol=2e-3, rtol=0)


@pytest.mark.parametrize("change", [
    ("text_prefix", "query: "), ("text_max_length", 7), ("spectrogram_n_mels", 24), ("whisper_hop_length", 200),
    ("image_size", 40), ("image_mean", [0.5, 0.5, 0.5]), ("image_std", [0.5, 0.5, 0.5]), ("do_normalize", True),
    ("spectrogram_top_db", 60.0), ("tokenizer", "lower"), ("truncation_side", "left"),
])
def test_any_processor_change_rebuilds_the_cache(setup, change, monkeypatch):
    """A cache built with one processor is never reused for another: every setting that changes what the
    backbones see (prompt, length limit, mel settings, image size, normalisation, tokenizer) rebuilds."""
    import copy

    root, data, model, processor = setup
    cache = str(root / f"cache-change-{change[0]}")
    build_feature_cache(model, processor, data, cache, batch_size=4, chunk_size=8, progress=False)
    changed = copy.deepcopy(processor)
    name, value = change
    if name in ("text_prefix", "text_max_length"):
        setattr(changed, name, value)
    elif name == "tokenizer":
        from tokenizers import normalizers
        changed.tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    elif name == "truncation_side":
        changed.tokenizer.truncation_side = value
    else:
        setattr(changed.feature_extractor, name, value)

    calls = []
    original = model.get_speech_frames
    monkeypatch.setattr(model, "get_speech_frames", lambda *a, **k: calls.append(1) or original(*a, **k))
    build_feature_cache(model, processor, data, cache, batch_size=4, chunk_size=8, progress=False)
    assert calls == []  # the same processor: up to date
    build_feature_cache(model, changed, data, cache, batch_size=4, chunk_size=8, progress=False)
    assert calls, f"changing {name} reused the stale cache"


def test_the_fingerprint_does_not_move_when_the_processor_is_used(setup):
    """A fast tokenizer keeps the truncation/padding of its last call: that state is not a setting."""
    from data_clasp.features import processor_fingerprint

    _, _, _, processor = setup
    before = processor_fingerprint(processor)
    processor(text=["the cat sat on the mat"] * 2)
    processor.tokenizer(["a"], truncation=True, max_length=3, padding="max_length")
    assert processor_fingerprint(processor) == before


def test_bf16_features_run_and_are_cached_apart_from_fp32(setup, tmp_path):
    """`clasp features --bf16`: the backbones run in bfloat16 (the speech input cast with them) and give
    features close to fp32's; they are a different cache from the fp32 one."""
    import copy

    from data_clasp.features import cache_fingerprint

    root, data, model, processor = setup
    fp32 = load_from_disk(build_feature_cache(model, processor, data, str(tmp_path / "fp32"), batch_size=4,
                                              chunk_size=8, progress=False))["train"]
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    assert cache_fingerprint(bf16_model, processor) != cache_fingerprint(model, processor)
    bf16 = load_from_disk(build_feature_cache(bf16_model, processor, data, str(tmp_path / "bf16"), batch_size=4,
                                              chunk_size=8, progress=False))["train"]
    for column in ("speech_embeds", "spectrogram_embeds", "text_embeds"):
        a, b = np.array(fp32[column], dtype=np.float32), np.array(bf16[column], dtype=np.float32)
        assert np.isfinite(b).all()
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.98, (column, cosine)


def test_clasp_features_bf16_command(setup, tmp_path):
    """The command line's --bf16 (it crashed before: the speech input stayed float32)."""
    from clasp_cli.main import main

    assert main(features_command(setup, tmp_path) + ["--output", str(tmp_path / "features"), "--bf16",
                                                     "--batch-size", "4"]) == 0
    cached = load_from_disk(str(tmp_path / "features"))["train"]
    assert np.isfinite(np.array(cached["speech_embeds"])).all() and len(cached) == 5
    assert json.loads((tmp_path / "features" / MARKER).read_text())["dtype"] == "bfloat16"  # not silently fp32


def test_two_cpu_processes_share_the_chunks(setup, tmp_path):
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m clasp_cli.main features`:
    each process computes half of the chunks (before, both took themselves for the only process and
    computed all of them), and the cache equals one process's."""
    import re

    root, data, model, processor = setup
    result = launch(*features_command(setup, tmp_path), "--output", str(tmp_path / "two"), "--chunk-size", "2",
                    "--batch-size", "2")
    # 5 + 2 rows in chunks of 2: 4 chunks, 2 for each process (the main process's bar counts its own).
    assert re.search(r"features \(chunks\): 100%\|[^|]*\| 2/2 ", result.stderr), result.stderr[-2000:]
    one = load_from_disk(build_feature_cache(model, processor, data, str(tmp_path / "one"), batch_size=2, chunk_size=2,
                                             progress=False))
    two = load_from_disk(str(tmp_path / "two"))
    for split in ("train", "validation"):
        for column in ("speech_embeds", "spectrogram_embeds", "text_embeds"):
            np.testing.assert_allclose(np.array(two[split][column]), np.array(one[split][column]), atol=1e-5)
