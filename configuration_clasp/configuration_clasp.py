"""ClaspConfig: what a CLASP model is made of.

A CLASP model has three backbones, each described by an ordinary transformers config:
  speech_config        a speech encoder (hubert, wav2vec2, wavlm, or whisper: its encoder is used)
  spectrogram_config   an ImageNet CNN that reads the log-mel spectrogram as a picture (efficientnet)
  text_config          the frozen multilingual sentence encoder of the transcript (bert, xlm-roberta)
and a small trained fusion head that maps the two audio branches onto the text embedding space.
The defaults are the paper's shapes: HuBERT-large (1024-d), EfficientNet-B7, LaBSE (768-d).

This file is also published flat on the Hub (see `hub_code_files`), so it imports only the
standard library and transformers.
"""

import contextlib
import importlib
import inspect
import math
import os
import re
import shutil
import sys
import tempfile

from transformers import AutoConfig, PretrainedConfig

# The flat files `auto_map` names, side by side on the Hub.
HUB_CODE_FILES = ("configuration_clasp.py", "modeling_clasp.py", "feature_extraction_clasp.py", "processing_clasp.py")
# A sibling import: relative in a flat folder, through our package in this repository.
_SIBLING_IMPORT = re.compile(r"^from ((?:\.|(?:configuration_clasp|modeling_clasp|processing_clasp)\.)\w+) import", re.M)


def hub_code_files(cls) -> dict[str, str]:
    """The flat Hub source of the module that defines `cls` and of every sibling module it imports:
    {file name: source}, with sibling imports made relative.

    The source is read from wherever the class was loaded: our packages
    (`modeling_clasp/modeling_clasp.py`, absolute imports rewritten: the Hub only follows
    `from .module import X` and takes an absolute sibling import for a missing pip package) or a
    flat folder (transformers keeps each remote-code module in its own hashed folder under
    HF_MODULES_CACHE, with only the files that module imports).
    """
    files, pending = {}, [sys.modules[cls.__module__]]
    while pending:
        module = pending.pop()
        name = module.__name__.rsplit(".", 1)[-1] + ".py"
        if name in files:
            continue
        with open(inspect.getsourcefile(module), encoding="utf-8") as f:
            source = f.read()
        files[name] = _SIBLING_IMPORT.sub(lambda m: f"from .{m.group(1).rsplit('.', 1)[-1]} import", source)
        pending += [importlib.import_module(path, module.__package__) for path in _SIBLING_IMPORT.findall(source)]
    return files


def save_hub_code(save_directory: str, cls) -> None:
    """Write the flat remote-code files of `cls` (see `hub_code_files`) into `save_directory`."""
    # A subclass defined elsewhere (a user's script) saves the code of the CLASP class it extends:
    # that is the class `auto_map` names.
    cls = next(c for c in cls.__mro__ if c.__module__.rsplit(".", 1)[-1] + ".py" in HUB_CODE_FILES)
    for file_name, source in hub_code_files(cls).items():
        with open(os.path.join(save_directory, file_name), "w", encoding="utf-8") as f:
            f.write(source)


@contextlib.contextmanager
def staged_save(save_directory):
    """A temporary folder beside `save_directory` to save into; on success its files are moved into
    `save_directory` (created if needed, other files kept), each whole by os.replace. A save that
    fails leaves `save_directory` as it was."""
    save_directory = os.path.abspath(save_directory)
    if os.path.isfile(save_directory):
        raise NotADirectoryError(f"save_directory {save_directory} is a file, not a folder")
    parent, name = os.path.split(save_directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        yield staging
        for root, _, files in os.walk(staging):
            target = os.path.join(save_directory, os.path.relpath(root, staging))
            os.makedirs(target, exist_ok=True)
            for file_name in files:
                os.replace(os.path.join(root, file_name), os.path.join(target, file_name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_with_code(obj, save_pretrained, save_directory, push_to_hub, kwargs):
    """`save_pretrained(folder, **kwargs)` of `obj` (the transformers method) with `obj`'s flat Hub
    code, staged (`staged_save`); then, with push_to_hub, `obj.push_to_hub` as transformers does
    (repo_id defaults to the folder's name)."""
    hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "commit_description", "private", "token",
                                                   "create_pr", "revision") if key in kwargs}
    with staged_save(save_directory) as staging:
        save_hub_code(staging, type(obj))
        result = save_pretrained(staging, **kwargs)
    if push_to_hub:
        repo_id = hub_kwargs.pop("repo_id", os.path.basename(os.path.abspath(save_directory)))
        obj.push_to_hub(repo_id, **hub_kwargs)
    return result


def _as_config(value, default_model_type, default_kwargs):
    if value is None:
        return AutoConfig.for_model(default_model_type, **default_kwargs)
    if isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    return AutoConfig.for_model(value.pop("model_type", default_model_type), **value)


# The paper's backbones (HuBERT-large-ls960-ft, EfficientNet-B7, LaBSE), as config kwargs.
PAPER_SPEECH = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
)
PAPER_SPECTROGRAM = dict(width_coefficient=2.0, depth_coefficient=3.1, image_size=600, dropout_rate=0.5, hidden_dim=2560)
PAPER_TEXT = dict(vocab_size=501153, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


FUSIONS = ("concat", "gating", "speech_only", "spectrogram_only")
# Fields earlier versions kept here though no model code read them: preprocessing settings, which
# live in the processor's saved files (ClaspProcessor, ClaspFeatureExtractor). An old config.json
# still carries them; they are dropped on load, so they do not come back on the next save.
PREPROCESSING_FIELDS = ("text_query_prefix", "text_passage_prefix", "text_max_length", "sampling_rate",
                        "spectrogram_n_fft", "spectrogram_hop_length", "spectrogram_n_mels", "spectrogram_top_db")


class ClaspConfig(PretrainedConfig):
    r"""
    Configuration of a [`ClaspModel`].

    Args:
        speech_config (`dict` or `PretrainedConfig`): the speech encoder (hubert, wav2vec2, wavlm, whisper).
        spectrogram_config (`dict` or `PretrainedConfig`): the spectrogram CNN (a transformers vision model
            whose output has `pooler_output`, e.g. efficientnet).
        text_config (`dict` or `PretrainedConfig`): the frozen sentence encoder's transformer.
        speech_layer (`int`): which hidden state of the speech encoder is pooled (-1 = last).
        speech_pooling (`str`): how the speech encoder's frames become one vector: "mean" over real frames
            (the paper) or "attention" (a learned query attends over the frames, as SigLIP's pooling head;
            beyond the paper: a mean dilutes the few frames that carry each word).
        speech_frame_stride (`int`): frames are averaged in windows of this many before pooling (4 turns
            Whisper's and HuBERT's 50 frames a second into 12.5, ~ the rate of phones). The weighted mean
            of the windows is exactly the mean of the frames, so "mean" pooling does not depend on it.
        speech_pooling_heads (`int`): attention heads of the "attention" pooling.
        speech_trainable_layers (`int`): the last k layers of the (otherwise frozen) speech encoder train
            with the head (0: none, the paper). Their input, the hidden state that enters layer L-k, is
            what `get_speech_frames` returns and `clasp features` caches (windowed by
            `speech_frame_stride`); `pool_speech` runs the k layers (and the encoder's final norm) on
            it, so training on the cache and encoding raw audio compute the same thing. Needs
            `speech_layer=-1`. SAMU-XLSR and SENSE (XLS-R toward frozen LaBSE) train the encoder itself.
        speech_whisper_padding (`str`): what Whisper's encoder sees: "real" (the default) runs it on the
            clip's real length, padding masked; "max_length" (WhisperFeatureExtractor's name) on the
            log-mel of the waveform zero-padded to 30 s, all 3000 frames unmasked, as Whisper was
            pretrained, pooling only the frames of the real audio. The processor's feature extractor
            must agree (`whisper_padding`; `load_model_and_processor` and `clasp features` set it).
            "max_length" is for Whisper only and needs `speech_trainable_layers=0` (the cache would
            have to hold all 1500 frames, padding included, for the k layers to attend over): a
            ValueError otherwise.
        text_pooling (`str`): "mean" over real tokens, "cls", or "pooler" (the transformer's own pooler: for
            LaBSE this is sentence-transformers' Dense+tanh on the CLS token).
        text_normalize (`bool`): L2-normalise the sentence embedding, as sentence-transformers' Normalize.
        fusion (`str`): "concat" or "gating" (the paper's two heads), or one branch alone, the paper's
            ablations: "speech_only" (the speech encoder) or "spectrogram_only" (the spectrogram CNN).
        fusion_branch_dims (`list[int]`): widths of each branch's MLP; the last is the branch output.
        fusion_head_dims (`list[int]`): hidden widths of the MLP after concatenation.
        fusion_dropout (`list[float]`): dropout after the first two branch layers.
        projection_dim (`int`): output dimension = the text embedding dimension.
        loss (`str`): "contrastive" (symmetric InfoNCE, learnable logit scale, CLIP convention),
            "contrastive_fixed" (the paper's form: cosine times a fixed `fixed_logit_scale`), or
            "huber" (the paper's LASP regression onto the text embedding).
        logit_scale_init_value (`float`): initial log of the logit scale (ln(1/0.07)).
        logit_scale_max (`float`): the logit scale is kept at most exp(this) (ln 100, as CLIP): clamped
            after each optimizer step (as open_clip's trainer) and when loading, not in forward.
        fixed_logit_scale (`float`): the paper's multiplier, 0.07: it *multiplies* the cosine
            (`cos * exp(log 0.07)` in the notebooks), so logits stay in [-0.07, 0.07].
        huber_delta (`float`): the paper's Huber delta.
        freeze_speech_encoder / freeze_spectrogram_encoder / freeze_text_encoder (`bool`): frozen parts get no
            gradient and stay in eval mode (batch norm statistics and dropout untouched) during training.
    """

    model_type = "clasp"
    sub_configs = {"speech_config": AutoConfig, "spectrogram_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        speech_config=None,
        spectrogram_config=None,
        text_config=None,
        speech_layer=-1,
        speech_pooling="mean",
        speech_frame_stride=4,
        speech_pooling_heads=8,
        speech_trainable_layers=0,
        speech_whisper_padding="real",
        text_pooling="pooler",
        text_normalize=True,
        fusion="concat",
        fusion_branch_dims=(768, 576, 768),
        fusion_head_dims=(1024, 800),
        fusion_dropout=(0.15, 0.1),
        projection_dim=None,
        loss="contrastive",
        logit_scale_init_value=math.log(1 / 0.07),
        logit_scale_max=math.log(100.0),
        fixed_logit_scale=0.07,
        huber_delta=0.6,
        freeze_speech_encoder=True,
        freeze_spectrogram_encoder=True,
        freeze_text_encoder=True,
        **kwargs,
    ):
        self.speech_config = _as_config(speech_config, "hubert", PAPER_SPEECH)
        self.spectrogram_config = _as_config(spectrogram_config, "efficientnet", PAPER_SPECTROGRAM)
        self.text_config = _as_config(text_config, "bert", PAPER_TEXT)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if loss not in ("contrastive", "contrastive_fixed", "huber"):
            raise ValueError(f"loss must be 'contrastive', 'contrastive_fixed' or 'huber', got {loss!r}")
        if speech_pooling not in ("mean", "attention"):
            raise ValueError(f"speech_pooling must be 'mean' or 'attention', got {speech_pooling!r}")
        depth = getattr(self.speech_config, "encoder_layers", None) or getattr(self.speech_config, "num_hidden_layers", 0)
        if not isinstance(speech_trainable_layers, int) or not 0 <= speech_trainable_layers <= depth:
            raise ValueError(f"speech_trainable_layers must be an int from 0 to the speech encoder's {depth} layers, "
                             f"got {speech_trainable_layers!r}")
        if speech_trainable_layers and speech_layer != -1:
            raise ValueError(f"speech_trainable_layers={speech_trainable_layers} trains the encoder's last layers: "
                             f"it needs speech_layer=-1, got {speech_layer}")
        if speech_whisper_padding not in ("real", "max_length"):
            raise ValueError(f"speech_whisper_padding must be 'real' or 'max_length', got {speech_whisper_padding!r}")
        if speech_whisper_padding == "max_length" and self.speech_config.model_type != "whisper":
            raise ValueError(f"speech_whisper_padding='max_length' pads Whisper's input to 30 s; this speech encoder "
                             f"is {self.speech_config.model_type!r} (use 'real')")
        if speech_whisper_padding == "max_length" and speech_trainable_layers:
            raise ValueError(f"speech_whisper_padding='max_length' needs speech_trainable_layers=0, got "
                             f"{speech_trainable_layers}: the cache would have to hold all 1500 frames, padding included")
        if text_pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"text_pooling must be 'mean', 'cls' or 'pooler', got {text_pooling!r}")
        self.speech_layer = speech_layer
        self.speech_pooling = speech_pooling
        self.speech_frame_stride = speech_frame_stride
        self.speech_pooling_heads = speech_pooling_heads
        self.speech_trainable_layers = speech_trainable_layers
        self.speech_whisper_padding = speech_whisper_padding
        self.text_pooling = text_pooling
        self.text_normalize = text_normalize
        self.fusion = fusion
        self.fusion_branch_dims = list(fusion_branch_dims)
        self.fusion_head_dims = list(fusion_head_dims)
        self.fusion_dropout = list(fusion_dropout)
        self.projection_dim = projection_dim if projection_dim is not None else self.text_config.hidden_size
        self.loss = loss
        self.logit_scale_init_value = logit_scale_init_value
        self.logit_scale_max = logit_scale_max
        self.fixed_logit_scale = fixed_logit_scale
        self.huber_delta = huber_delta
        self.freeze_speech_encoder = freeze_speech_encoder
        self.freeze_spectrogram_encoder = freeze_spectrogram_encoder
        self.freeze_text_encoder = freeze_text_encoder
        for key in PREPROCESSING_FIELDS:  # in config.json files saved before the processor was their one home
            kwargs.pop(key, None)
        kwargs.setdefault(
            "auto_map",
            {"AutoConfig": "configuration_clasp.ClaspConfig", "AutoModel": "modeling_clasp.ClaspModel"},
        )
        super().__init__(**kwargs)

    @property
    def uses_speech(self) -> bool:
        return self.fusion != "spectrogram_only"

    @property
    def uses_spectrogram(self) -> bool:
        return self.fusion != "speech_only"

    @property
    def speech_needs_frames(self) -> bool:
        """Whether the speech vector is computed from the encoder's frames (attention pooling, or
        trainable top layers run on them), so cached features must include the frames, not just their mean."""
        return self.speech_pooling == "attention" or self.speech_trainable_layers > 0

    @property
    def speech_is_whisper(self) -> bool:
        return self.speech_config.model_type == "whisper"

    @property
    def speech_hidden_size(self) -> int:
        config = self.speech_config
        return config.d_model if self.speech_is_whisper else config.hidden_size

    @property
    def spectrogram_hidden_size(self) -> int:
        config = self.spectrogram_config
        for name in ("hidden_dim", "hidden_size"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        return config.hidden_sizes[-1]  # resnet, convnext

    @property
    def spectrogram_image_size(self) -> int:
        size = getattr(self.spectrogram_config, "image_size", 224)
        return size if isinstance(size, int) else size[0]

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        # Every save carries its class's code, so the folder loads with trust_remote_code=True
        # wherever it goes (the model and processor saves add theirs).
        return save_with_code(self, super().save_pretrained, save_directory, push_to_hub, kwargs)


__all__ = ["ClaspConfig", "save_hub_code", "hub_code_files", "save_with_code", "staged_save"]
