"""A new CLASP on pretrained backbones: the model (untrained fusion head) and its processor.

The library side of building a model, kept out of the Hub files (modeling_clasp, processing_clasp:
remote code only rebuilds a saved CLASP): backbone presets, where the offline backbones live
(backbones_clasp.build), and reading a sentence-transformers folder. Each part's own files give
every setting: the model's (pooling, normalisation) go into ClaspConfig, the preprocessing ones
(prompt, token limit, mel bins, image size, mean/std) into the processor's saved files.
"""

import json
import os

from transformers import AutoConfig, AutoModel, AutoTokenizer, WhisperModel
from transformers.modeling_utils import load_state_dict
from transformers.utils import cached_file

from configuration_clasp import ClaspConfig
from modeling_clasp import ClaspModel
from processing_clasp import ClaspFeatureExtractor, ClaspProcessor
from processing_clasp.feature_extraction_clasp import IMAGENET_MEAN, IMAGENET_STD

from .build import default_backbones_dir

BACKBONE_PRESETS = {
    "paper": {
        "speech": "facebook/hubert-large-ls960-ft",
        "spectrogram": "google/efficientnet-b7",
        "text": "sentence-transformers/LaBSE",
    },
    # Folder names under default_backbones_dir(), as `clasp backbones build` writes them.
    "offline-base": {"speech": "whisper-base", "spectrogram": "efficientnet-lite0", "text": "multilingual-e5-small"},
}


def build_clasp(speech=None, spectrogram=None, text=None, preset=None, **config_kwargs) -> tuple[ClaspModel, ClaspProcessor]:
    """An untrained CLASP (fresh fusion head) on pretrained backbones, and the processor that matches it.

    `speech`, `spectrogram`, `text`: local folders or Hub ids of a speech encoder (HuBERT, wav2vec2,
    WavLM, Whisper), a transformers image CNN, and a sentence-transformers model (see
    `read_sentence_transformer`). `preset` fills the ones not given (see `resolve_backbones`).
    `config_kwargs` go to ClaspConfig (fusion, loss, pooling, freezing...).

    Returns (model, processor); the model in eval mode, as `from_pretrained` returns it (call
    `.train()` to train the head). Raises FileNotFoundError for a missing offline backbone folder,
    ValueError for an unknown preset or an unsupported sentence-transformers pipeline.
    """
    parts = resolve_backbones(speech, spectrogram, text, preset)
    text_setup = read_sentence_transformer(parts["text"])
    config = ClaspConfig(
        speech_config=AutoConfig.from_pretrained(parts["speech"]).to_dict(),
        spectrogram_config=AutoConfig.from_pretrained(parts["spectrogram"]).to_dict(),
        text_config=AutoConfig.from_pretrained(text_setup["transformer_path"]).to_dict(),
        text_pooling=text_setup["pooling"],
        text_normalize=text_setup["normalize"],
        **config_kwargs,
    )
    model = ClaspModel(config)
    if config.speech_is_whisper:
        model.speech_model = WhisperModel.from_pretrained(parts["speech"]).get_encoder()
    else:
        model.speech_model = AutoModel.from_pretrained(parts["speech"])
    model.spectrogram_model = AutoModel.from_pretrained(parts["spectrogram"])
    pooling_kwargs = {} if config.text_pooling == "pooler" else {"add_pooling_layer": False}
    model.text_model = AutoModel.from_pretrained(text_setup["transformer_path"], **pooling_kwargs)
    if text_setup["dense"] is not None:  # LaBSE: sentence-transformers' Dense+tanh is BERT's pooler
        model.text_model.pooler.dense.load_state_dict(text_setup["dense"])
    tokenizer = AutoTokenizer.from_pretrained(text_setup["transformer_path"])
    # sentence-transformers 6 keeps the limit as the tokenizer's model_max_length (a huge number when unset).
    max_length = text_setup["max_length"] or min(tokenizer.model_max_length, config.text_config.max_position_embeddings)
    processor = ClaspProcessor(build_feature_extractor(config, parts["speech"], parts["spectrogram"]), tokenizer,
                               text_prefix=text_setup["query_prompt"], text_max_length=max_length)
    return model.float().freeze_backbones().eval(), processor


def build_feature_extractor(config: ClaspConfig, speech: str, spectrogram: str) -> ClaspFeatureExtractor:
    """The feature extractor for `config`'s backbones, read from the backbones' folders (or Hub ids)
    `speech` and `spectrogram`: the speech encoder's normalisation (its preprocessor_config.json) or
    Whisper's mel bins and 30-s window; the CNN's input size and mean/std (else ImageNet's)."""
    if config.speech_is_whisper:
        whisper = config.speech_config
        speech_kwargs = dict(speech_features="whisper_log_mel", feature_size=whisper.num_mel_bins, do_normalize=False,
                             max_samples=whisper.max_source_positions * 2 * 160,
                             whisper_padding=config.speech_whisper_padding)
    else:
        speech_preprocessing = read_json(speech, "preprocessor_config.json") or {}
        speech_kwargs = dict(speech_features="waveform", feature_size=1,
                             do_normalize=speech_preprocessing.get("do_normalize", True))
    image_preprocessing = read_json(spectrogram, "preprocessor_config.json") or {}
    return ClaspFeatureExtractor(
        image_size=config.spectrogram_image_size,
        image_mean=image_preprocessing.get("image_mean", IMAGENET_MEAN),
        image_std=image_preprocessing.get("image_std", IMAGENET_STD),
        **speech_kwargs,
    )


def resolve_backbones(speech, spectrogram, text, preset) -> dict:
    """{"speech", "spectrogram", "text"}: the parts given, the others from `preset` ("paper":
    HuBERT-large, EfficientNet-B7, LaBSE, from the Hub; "offline-base", the default: Whisper-base,
    EfficientNet-Lite0, multilingual-e5-small under `default_backbones_dir()`, built by
    `clasp backbones build`). A part given as a path (absolute, ./, ~/) that is no folder: FileNotFoundError
    naming it (transformers would call it a malformed Hub id)."""
    chosen = {"speech": speech, "spectrogram": spectrogram, "text": text}
    for part, path in chosen.items():
        if path is None:
            continue
        chosen[part] = path = os.path.expanduser(os.fspath(path))
        if (os.path.isabs(path) or path.startswith(".")) and not os.path.isdir(path):
            raise FileNotFoundError(f"{part} backbone {path}: no such folder")
    if preset is None and None in chosen.values():
        preset = "offline-base"
    if preset is not None:
        if preset not in BACKBONE_PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; choose one of {sorted(BACKBONE_PRESETS)}")
        for part, default in BACKBONE_PRESETS[preset].items():
            if chosen[part] is None:
                if preset == "offline-base":
                    default = str(default_backbones_dir() / default)
                    if not os.path.isdir(default):
                        raise FileNotFoundError(
                            f"offline backbone folder {default} is missing: run `clasp backbones build` first "
                            "(or set CLASP_BACKBONES_DIR to where it was built)."
                        )
                chosen[part] = default
    return chosen


def read_json(path_or_id, name) -> dict | list | None:
    """The JSON file `name` of a local folder or Hub repo, or None where it has none."""
    path = cached_file(path_or_id, name, _raise_exceptions_for_missing_entries=False)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_sentence_transformer(path_or_id: str) -> dict:
    """How a sentence-transformers model embeds text, read from its files (no sentence-transformers import):
    {"transformer_path", "pooling", "normalize", "dense", "query_prompt", "max_length"}.

    Supported pipelines: Transformer → Pooling(mean | cls, prompt included) → [Dense(d→d, tanh) on cls] → [Normalize].
    A plain transformers folder (no modules.json) is taken as mean pooling + normalisation.
    `max_length` is the Transformer module's `max_seq_length` (sentence_bert_config.json of
    sentence-transformers < 6; None where it names none); `query_prompt` is the "query" prompt of
    config_sentence_transformers.json ("query: " for e5, "" for LaBSE).
    """
    setup = {"transformer_path": path_or_id, "pooling": "mean", "normalize": True, "dense": None,
             "query_prompt": "", "max_length": None}
    modules = read_json(path_or_id, "modules.json")
    if modules is None:
        return setup
    setup["normalize"] = False
    for module in modules:
        kind, folder = module["type"].rsplit(".", 1)[-1], module.get("path", "")
        if kind == "Transformer":
            if folder and not os.path.isdir(path_or_id):  # transformers would read the repo's root
                raise ValueError(f"{path_or_id}: its Transformer is in {folder}/; download the repo "
                                 f"(`hf download {path_or_id} --local-dir DIR`) and pass DIR")
            if folder:
                setup["transformer_path"] = os.path.join(path_or_id, folder)
            st_config = read_json(path_or_id, os.path.join(folder, "sentence_bert_config.json"))  # folder "": the root
            if st_config and st_config.get("max_seq_length"):
                setup["max_length"] = st_config["max_seq_length"]
        elif kind == "Pooling":
            pooling = read_json(path_or_id, f"{folder}/config.json") or {}
            # sentence-transformers 6 writes "pooling_mode"; earlier versions one flag per mode.
            setup["pooling"] = pooling.get("pooling_mode") or ("cls" if pooling.get("pooling_mode_cls_token") else
                                                              "mean" if pooling.get("pooling_mode_mean_tokens", True) else None)
            if setup["pooling"] not in ("mean", "cls") or pooling.get("include_prompt") is False:
                raise ValueError(f"{path_or_id}: only mean or cls pooling over all tokens is supported, got {pooling}")
        elif kind == "Dense":
            setup["dense"] = read_tanh_dense(path_or_id, folder, read_json(path_or_id, f"{folder}/config.json") or {})
            setup["pooling"] = "pooler"
        elif kind == "Normalize":
            setup["normalize"] = True
        else:
            raise ValueError(f"{path_or_id}: sentence-transformers module {module['type']} is not supported")
    prompts = (read_json(path_or_id, "config_sentence_transformers.json") or {}).get("prompts") or {}
    setup["query_prompt"] = prompts.get("query", "")
    return setup


def read_tanh_dense(path_or_id, folder, dense_config) -> dict:
    """The weight and bias of a sentence-transformers Dense(d→d, tanh) module (LaBSE's), safetensors
    or a weights-only torch.load."""
    activation = dense_config.get("activation_function", "")
    if not activation.endswith("Tanh") or dense_config.get("in_features") != dense_config.get("out_features"):
        raise ValueError(f"{path_or_id}: only a square Dense with tanh after cls pooling (LaBSE) is supported")
    weights = cached_file(path_or_id, f"{folder}/model.safetensors", _raise_exceptions_for_missing_entries=False)
    if weights is None:
        weights = cached_file(path_or_id, f"{folder}/pytorch_model.bin")
    state = load_state_dict(weights, weights_only=True)
    return {"weight": state["linear.weight"], "bias": state["linear.bias"]}
