"""Tiny random CLASP parts built in code: no network, no downloads, a few seconds on a CPU."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
from transformers import BertTokenizerFast, EfficientNetConfig, HubertConfig, Wav2Vec2Config, WhisperConfig, BertConfig

from configuration_clasp import ClaspConfig
from processing_clasp import ClaspFeatureExtractor, ClaspProcessor

REPO = Path(__file__).resolve().parent.parent
WORDS = "the a cat dog sat on mat red blue green house car le chat est sur la der hund ist el perro".split()


# The tiny waveform encoders share their sizes; they differ in how the convolutions normalise.
TINY_WAVEFORM_ENCODER = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
    conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2, vocab_size=12,
)


def tiny_hubert_config():
    """HuBERT-large-style: layer normalisation in the convolutions."""
    return HubertConfig(**TINY_WAVEFORM_ENCODER, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)


def tiny_wav2vec2_config():
    """wav2vec2-base-style: group normalisation over time in the first convolution (as HuBERT-base, WavLM)."""
    return Wav2Vec2Config(**TINY_WAVEFORM_ENCODER, feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)


def tiny_whisper_config():
    return WhisperConfig(
        d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=37, decoder_layers=1,
        decoder_attention_heads=2, decoder_ffn_dim=37, num_mel_bins=8, max_source_positions=1500,
        max_target_positions=32, vocab_size=64,
    )


def tiny_efficientnet_config():
    return EfficientNetConfig(
        image_size=32, width_coefficient=0.05, depth_coefficient=0.1, hidden_dim=64, num_channels=3,
        kernel_sizes=[3, 3], in_channels=[8, 8], out_channels=[8, 16], depthwise_padding=[], strides=[1, 2],
        num_block_repeats=[1, 1], expand_ratios=[1, 2],
    )


def tiny_bert_config(vocab_size):
    return BertConfig(vocab_size=vocab_size, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)


def tiny_tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def tiny_config(speech="hubert", **kwargs):
    speech_config = {"hubert": tiny_hubert_config, "wav2vec2": tiny_wav2vec2_config, "whisper": tiny_whisper_config}[speech]()
    defaults = dict(
        speech_config=speech_config.to_dict(),
        spectrogram_config=tiny_efficientnet_config().to_dict(),
        text_config=tiny_bert_config(len(WORDS) + 5).to_dict(),
        text_pooling="mean",
        fusion_branch_dims=[16, 12, 16],
        fusion_head_dims=[20, 18],
    )
    defaults.update(kwargs)
    return ClaspConfig(**defaults)


def tiny_feature_extractor(config):
    if config.speech_is_whisper:
        speech = dict(speech_features="whisper_log_mel", feature_size=config.speech_config.num_mel_bins,
                      do_normalize=False, max_samples=30 * 16000, whisper_padding=config.speech_whisper_padding)
    else:
        speech = dict(speech_features="waveform", feature_size=1)
    return ClaspFeatureExtractor(image_size=config.spectrogram_image_size, spectrogram_n_mels=16, **speech)


def tiny_processor(config, tmp_path):
    # Texts are cut at the tiny BERT's positions, as a real processor cuts at its sentence encoder's.
    return ClaspProcessor(tiny_feature_extractor(config), tiny_tokenizer(tmp_path), text_prefix="",
                          text_max_length=config.text_config.max_position_embeddings)


def tone(seconds, rate=16000, freq=220.0, seed=0):
    """A voiced-sounding test clip: a tone with harmonics and a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 5))
    return (0.3 * wave + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def tiny_model(config):
    """A random ClaspModel whose CNN passes signal through.

    transformers initialises EfficientNet's batch-norm scales at ~0.02, so a random CNN's pooled
    output underflows to ~1e-23 and the spectrogram branch would be all zeros in every test.
    Unit scales make it behave like a trained CNN (activations of order 1).
    """
    from torch import nn

    from modeling_clasp import ClaspModel

    model = ClaspModel(config)
    for module in model.spectrogram_model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return model


def tiny_speech_setup(root, texts, seconds, rates, groups=False, n_train=5):
    """(root, DatasetDict of tone clips, a tiny Whisper CLASP in eval mode, its processor): clip i says
    texts[i] for seconds[i] at rates[i] Hz (read back at 16 kHz); the first n_train rows are train,
    the rest validation; `groups` adds a group column (one group a clip)."""
    import soundfile
    import torch
    from datasets import Audio, Dataset, DatasetDict

    paths = []
    for i, (length, rate) in enumerate(zip(seconds, rates)):
        paths.append(str(Path(root) / f"clip{i}.wav"))
        soundfile.write(paths[-1], tone(length, rate=rate, freq=150 + 40 * i, seed=i), rate)
    columns = {"audio": paths, "text": list(texts), "language": ["en"] * len(texts)}
    if groups:
        columns["group"] = list(range(len(texts)))
    rows = Dataset.from_dict(columns).cast_column("audio", Audio(sampling_rate=16000))
    data = DatasetDict({"train": rows.select(range(n_train)), "validation": rows.select(range(n_train, len(texts)))})
    config = tiny_config("whisper")
    torch.manual_seed(0)
    return root, data, tiny_model(config).eval(), tiny_processor(config, root)


def features_command(setup, folder) -> list:
    """`clasp features` arguments (`--model` and `--data`) for a `tiny_speech_setup`, saved under `folder`."""
    _, data, model, processor = setup
    model.save_pretrained(Path(folder) / "model")
    processor.save_pretrained(Path(folder) / "model")
    data.save_to_disk(str(Path(folder) / "data"))
    return ["features", "--model", str(Path(folder) / "model"), "--data", str(Path(folder) / "data")]


def save_tiny_clasp(path, speech="whisper"):
    """A tiny random CLASP folder (model + processor), as `clasp embed/index/search` read one."""
    config = tiny_config(speech)
    tiny_model(config).save_pretrained(path)
    tiny_processor(config, path).save_pretrained(path)
    return path


def oracle_index(index_dir, model_dir, clips, transcripts, languages):
    """An index in which each clip's vector is the text embedding of its transcript.

    That is what a perfectly trained CLASP would store. A tiny random model cannot put speech
    next to its transcript, so this is how a test can know which file a text query must find first.
    """
    import soundfile

    from search_clasp import ClaspEmbedder, ClaspIndex, model_identity

    embedder = ClaspEmbedder.from_pretrained(model_dir, device="cpu")
    index = ClaspIndex.create(index_dir, model_identity(model_dir), model_dir, embedder.model.config.projection_dim)
    durations = [soundfile.info(clip).duration for clip in clips]
    index.add([str(c) for c in clips], durations, embedder.embed_texts(transcripts).numpy(), transcripts, languages)
    index.write_faiss()
    index.close()
    return index_dir


def launch(*arguments):
    """`accelerate launch --multi_gpu --num_processes 2 -m clasp_cli.main ...` on the CPU (gloo)."""
    with socket.socket() as s:  # a free port: other test runs may launch at the same time
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
               "--dynamo_backend", "no", "-m", "clasp_cli.main", *arguments]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result
