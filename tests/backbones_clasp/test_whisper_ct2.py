import re
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from backbones_clasp.whisper_ct2 import MODEL_BIN_PART1, MODEL_BIN_PART2

# Debian's pocketsphinx-testdata: five LibriVox clips of Sense and Sensibility with transcripts.
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SHORTEST_CLIP = "sense_and_sensibility_01_austen_64kb-0880"  # "he was not an ill disposed young man"
normalize = EnglishTextNormalizer({})  # Whisper's own English WER normalisation ("Mr." -> "mister")


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as f:
        assert f.getframerate() == 16000 and f.getnchannels() == 1 and f.getsampwidth() == 2
        return np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word-level Levenshtein distance over the whole corpus, divided by the reference word count."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = reference.split(), hypothesis.split()
        row = list(range(len(hyp) + 1))
        for i, ref_word in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, hyp_word in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
        errors, words = errors + row[-1], words + len(ref)
    return errors / words


def test_word_error_rate():
    assert word_error_rate(["a b c d"], ["a x c"]) == 0.5
    assert word_error_rate(["a b", "c"], ["a b", "c"]) == 0.0


@pytest.fixture(scope="module")
def librivox():
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip("apt-get install pocketsphinx-testdata")
    clips = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, clip_id = re.fullmatch(r"<s> (.*) </s> \((\S+)\)", line.strip()).groups()
        clips[clip_id] = (read_wav(LIBRIVOX / f"{clip_id}.wav"), text)
    return clips


@pytest.fixture(scope="module")
def processor(backbones):
    return WhisperProcessor.from_pretrained(backbones["whisper-base"])


@pytest.fixture(scope="module")
def model(backbones):
    return WhisperForConditionalGeneration.from_pretrained(backbones["whisper-base"]).eval()


def test_librivox_word_error_rate(librivox, processor, model):
    # One batched generate: on 2 CPU cores it costs half of five pipeline calls.
    wavs, texts = zip(*librivox.values())
    features = processor(list(wavs), sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        tokens = model.generate(features, language="en", task="transcribe")
    hypotheses = [normalize(text) for text in processor.batch_decode(tokens, skip_special_tokens=True)]
    assert word_error_rate([normalize(text) for text in texts], hypotheses) <= 0.15, hypotheses


def test_pipeline_loads_the_folder_alone(backbones, librivox):
    asr = pipeline("automatic-speech-recognition", model=str(backbones["whisper-base"]), device="cpu")
    wav, text = librivox[SHORTEST_CLIP]
    output = asr({"raw": wav, "sampling_rate": 16000}, generate_kwargs={"language": "en", "task": "transcribe"})
    assert normalize(output["text"]) == normalize(text)


def test_generation_config_knows_every_language(model):
    config = model.generation_config
    assert len(config.lang_to_id) == 99 and config.lang_to_id["<|en|>"] == 50259
    assert config.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert config.no_timestamps_token_id == 50363
    assert model.config.begin_suppress_tokens == config.begin_suppress_tokens == [220, 50257]


def test_matches_ctranslate2(librivox, processor, model, tmp_path):
    """Same encoder states and the same greedy transcript as the CTranslate2 runtime on the same file."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    (tmp_path / "model.bin").write_bytes(MODEL_BIN_PART1.locate().read_bytes() + MODEL_BIN_PART2.locate().read_bytes())
    (tmp_path / "vocabulary.txt").write_bytes(MODEL_BIN_PART1.locate().with_name("vocabulary.txt").read_bytes())
    (tmp_path / "config.json").write_bytes(MODEL_BIN_PART1.locate().with_name("config.json").read_bytes())
    reference = ctranslate2.models.Whisper(str(tmp_path), device="cpu", compute_type="float32")

    wav, _ = librivox[SHORTEST_CLIP]
    features = processor(wav, sampling_rate=16000, return_tensors="pt").input_features
    storage = ctranslate2.StorageView.from_array(features.numpy())
    with torch.no_grad():
        ours = model.model.encoder(features).last_hidden_state
        tokens = model.generate(features, language="en", task="transcribe")[0].tolist()
    theirs = torch.from_numpy(np.array(reference.encode(storage)))
    torch.testing.assert_close(ours, theirs, atol=5e-3, rtol=1e-3)  # CTranslate2 fuses and reorders ops
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    text_tokens = [token for token in tokens if token < processor.tokenizer.eos_token_id]  # drop prompt and EOT
    assert reference.generate(storage, [prompt], beam_size=1)[0].sequences_ids[0] == text_tokens
