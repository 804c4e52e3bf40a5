"""ClaspModel: speech in, an embedding next to the text embedding of what was said.

    audio ─┬─ speech encoder ── frames ── pooled (mean, or attention) ── L2 ── branch MLP ─┐
           └─ spectrogram CNN ── pooled ─────────────────────────────── L2 ── branch MLP ─┴─ fusion ── head ── L2 ── audio_embeds
    text ──── frozen sentence encoder ── pooling (as sentence-transformers) ── L2 ──────────────────────────────────── text_embeds

Training pulls audio_embeds onto text_embeds of the transcript (symmetric contrastive loss, or the
paper's Huber regression). The text side stays frozen, so text embeddings are those of the sentence
encoder itself: CLASP audio embeddings can be searched with any text that encoder can embed.

This file is also published flat on the Hub: it imports only torch, transformers and the standard library.
"""

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from configuration_clasp.configuration_clasp import ClaspConfig, save_with_code


@dataclass
class ClaspOutput(ModelOutput):
    """
    Args:
        loss: the training loss (with `return_loss=True` and both modalities given).
        logits_per_audio: `[n_audio, n_text]` scaled cosine similarities.
        logits_per_text: `[n_text, n_audio]`, the transpose.
        audio_embeds: `[n_audio, projection_dim]` L2-normalised fused audio embeddings.
        text_embeds: `[n_text, projection_dim]` sentence-encoder embeddings of the text.
        speech_embeds: `[n_audio, speech_hidden]` pooled (config.speech_pooling), L2-normalised speech-encoder features.
        spectrogram_embeds: `[n_audio, cnn_hidden]` pooled, L2-normalised spectrogram-CNN features.
    """

    loss: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    speech_embeds: torch.FloatTensor | None = None
    spectrogram_embeds: torch.FloatTensor | None = None


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the time axis of `[batch, time, dim]`, each frame weighted by `mask` (1 real, 0
    padding, or a window's share of real frames; see `window_mean`)."""
    if mask is None:
        return hidden_states.mean(dim=1)
    mask = mask.to(hidden_states.dtype).unsqueeze(-1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=torch.finfo(mask.dtype).tiny)


def window_mean(hidden_states: torch.Tensor, mask: torch.Tensor | None, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames averaged over real frames in windows of `stride`, and each window's share of real frames.

    The shares are the windows' weights: `masked_mean(*window_mean(h, mask, k))` is the mean of the
    real frames of `h` for any k, so caching the windows loses nothing "mean" pooling needs.
    """
    batch, time, dim = hidden_states.shape
    if mask is None:
        mask = torch.ones(batch, time, device=hidden_states.device)
    mask = mask.to(hidden_states.dtype)
    pad = (-time) % stride
    summed = F.pad(hidden_states * mask.unsqueeze(-1), (0, 0, 0, pad)).view(batch, -1, stride, dim).sum(dim=2)
    counts = F.pad(mask, (0, pad)).view(batch, -1, stride).sum(dim=2)
    return summed / counts.clamp(min=1.0).unsqueeze(-1), counts / stride


def gather_with_grad(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' features concatenated, and where this process's rows start.

    As open_clip's `gather_features(..., gather_with_grad=True)`: every process sees every other
    process's batch as negatives, and the gather keeps autograd (each process's gradient of the
    gathered rows is summed back to the rows' owner), so N processes × batch B train exactly like
    one process with batch N·B. Per-process batches must have the same size (accelerate's default
    `even_batches=True`).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return features, 0
    if torch.distributed.get_world_size() == 1:
        return features, 0
    return _AllGatherWithGrad.apply(features), torch.distributed.get_rank() * features.shape[0]


class _AllGatherWithGrad(torch.autograd.Function):
    """`torch.distributed.all_gather` along rows whose backward sums every process's gradient (an
    all-reduce: not every backend has a reduce-scatter) and keeps this process's rows. What
    torch.distributed.nn.functional.all_gather (open_clip's call) computes; that one warns
    "deprecated" from torch 2.14 on, pointing to the private torch.distributed._functional_collectives,
    whose names changed again in 2.14. These two collectives are public and stable on every backend."""

    @staticmethod
    def forward(ctx, features):
        gathered = [torch.empty_like(features) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(gathered, features.contiguous())
        rank, rows = torch.distributed.get_rank(), features.shape[0]
        ctx.rows = slice(rank * rows, (rank + 1) * rows)
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad_gathered):
        grad_gathered = grad_gathered.clone(memory_format=torch.contiguous_format)
        torch.distributed.all_reduce(grad_gathered)
        return grad_gathered[ctx.rows]


def clasp_loss(audio_embeds, text_embeds, logit_scale: torch.Tensor, config: ClaspConfig, pair_group_ids=None) -> torch.Tensor:
    """The training objective on L2-normalised embeddings `[batch, dim]` (row i of each is a pair).

    `pair_group_ids` `[batch]` (int64, optional): rows with the same id read the same sentence (one
    sentence group, any language or voice). Their cross pairs are then left out of the softmax
    denominators: another reading of the same sentence is not a wrong answer (the evaluation counts
    it as correct), so it is not pushed away as a negative. This is false-negative elimination
    (Huynh et al., "Boosting Contrastive Self-Supervised Learning with False Negative Cancellation",
    WACV 2022); without ids every other row is a negative, as in CLIP. The huber loss has no
    negatives and ignores them. Raises ValueError unless they are an integer tensor `[batch]`.
    """
    if pair_group_ids is not None:
        if not (isinstance(pair_group_ids, torch.Tensor) and pair_group_ids.shape == audio_embeds.shape[:1]
                and not pair_group_ids.is_floating_point() and not pair_group_ids.is_complex()
                and pair_group_ids.dtype != torch.bool):
            got = (f"{pair_group_ids.dtype} of shape {list(pair_group_ids.shape)}" if isinstance(pair_group_ids, torch.Tensor)
                   else type(pair_group_ids).__name__)
            raise ValueError(f"pair_group_ids: expected an integer tensor of shape [{audio_embeds.shape[0]}] "
                             f"(one sentence-group id a row of the batch), got {got}")
        pair_group_ids = pair_group_ids.to(device=audio_embeds.device, dtype=torch.int64)  # every process gathers int64
    if config.loss == "huber":
        # The paper's LASP variant: regress the audio embedding onto the text embedding.
        return F.huber_loss(audio_embeds, text_embeds, delta=config.huber_delta)
    all_audio, offset = gather_with_grad(audio_embeds)
    all_text, _ = gather_with_grad(text_embeds)
    labels = torch.arange(audio_embeds.shape[0], device=audio_embeds.device) + offset
    logits_per_audio = logit_scale * audio_embeds @ all_text.T
    logits_per_text = logit_scale * text_embeds @ all_audio.T
    if pair_group_ids is not None:
        all_ids = gather_without_grad(pair_group_ids)
        false_negative = pair_group_ids[:, None] == all_ids[None, :]
        false_negative[torch.arange(len(labels), device=labels.device), labels] = False  # the pair itself stays
        logits_per_audio = logits_per_audio.masked_fill(false_negative, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(false_negative, float("-inf"))
    return (F.cross_entropy(logits_per_audio, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def gather_without_grad(values: torch.Tensor) -> torch.Tensor:
    """All processes' `values` concatenated along rows, in rank order (themselves in one process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return values
    gathered = [torch.empty_like(values) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, values.contiguous())
    return torch.cat(gathered)


class ClaspBranchMLP(nn.Sequential):
    """The paper's per-branch MLP: Linear-BN-ReLU-Drop-Linear-BN-LeakyReLU-Drop-Linear."""

    def __init__(self, in_dim: int, dims: list[int], dropout: list[float]):
        hidden1, hidden2, out = dims
        super().__init__(
            nn.Linear(in_dim, hidden1), nn.BatchNorm1d(hidden1), nn.ReLU(), nn.Dropout(dropout[0]),
            nn.Linear(hidden1, hidden2), nn.BatchNorm1d(hidden2), nn.LeakyReLU(), nn.Dropout(dropout[1]),
            nn.Linear(hidden2, out),
        )


class ClaspGate(nn.Module):
    """One branch's LSTM-like gate from the paper: x' = σ(W_i x)·tanh(W_c x) + σ(W_f x)·x."""

    def __init__(self, dim: int):
        super().__init__()
        self.input_gate = nn.Linear(dim, dim)
        self.forget_gate = nn.Linear(dim, dim)
        self.candidate = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.sigmoid(self.input_gate(x)) * torch.tanh(self.candidate(x)) + torch.sigmoid(self.forget_gate(x)) * x


class ClaspAttentionPooling(nn.Module):
    """A learned query attends over the speech frames, multi-head: SigLIP's pooling head without its
    MLP (the branch MLP follows). Windows with no real frame (weight 0) are masked out.

    With one query the attention is computed exactly without projecting any frame. A head's score
    for frame x is q·(W_k x + b_k) = (W_kᵀq)·x + q·b_k, one dot product with a fixed vector (q·b_k is
    the same for every frame and cancels in the softmax); and the value projection commutes with the
    weighted sum: Σ α_t (W_v x_t + b_v) = W_v (Σ α_t x_t) + b_v. So a step costs two [frames × hidden]
    × [hidden × heads] products instead of nn.MultiheadAttention's [frames × hidden] × [hidden × 2·hidden]
    projections — 2·hidden/heads (128 for Whisper-base) times fewer, with the same output (tested).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"speech_pooling_heads={num_heads} must divide the speech encoder's width {dim}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.probe = nn.Parameter(torch.zeros(1, dim))
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)  # a key bias adds the same score to every frame: no effect
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, frames, frame_weights):
        batch, _, dim = frames.shape
        heads, head_dim = self.num_heads, self.head_dim
        query = self.q_proj(self.probe).view(heads, head_dim)
        keys = torch.einsum("hd,hdi->hi", query, self.k_proj.weight.view(heads, head_dim, dim))  # W_kᵀq per head
        scores = (frames @ keys.T) / head_dim**0.5  # [batch, frames, heads]
        scores = scores.masked_fill((frame_weights <= 0).unsqueeze(-1), torch.finfo(scores.dtype).min)
        pooled = torch.einsum("bth,bti->bhi", scores.softmax(dim=1), frames)  # each head's weighted mean frame
        values = torch.einsum("bhi,hdi->bhd", pooled, self.v_proj.weight.view(heads, head_dim, dim))
        values = values + self.v_proj.bias.view(heads, head_dim)
        return self.out_proj(values.reshape(batch, dim))


class ClaspFusion(nn.Module):
    """Merges the speech and spectrogram branches into one vector of `projection_dim`.

    concat: [speech; spectrogram] → head.  gating: each branch gated, then a softmax over the two
    branches (per dimension, from Linear(2H, 2H) of both) weights their sum → head.
    speech_only / spectrogram_only (the paper's ablations): that branch alone → head.
    The head is the paper's Linear-BN-LeakyReLU-Linear-LeakyReLU-Linear.
    """

    def __init__(self, config: ClaspConfig):
        super().__init__()
        branch_dim = config.fusion_branch_dims[-1]
        if config.uses_speech:
            self.speech_mlp = ClaspBranchMLP(config.speech_hidden_size, config.fusion_branch_dims, config.fusion_dropout)
        if config.uses_spectrogram:
            self.spectrogram_mlp = ClaspBranchMLP(config.spectrogram_hidden_size, config.fusion_branch_dims, config.fusion_dropout)
        self.fusion = config.fusion
        if config.fusion == "gating":
            self.speech_gate = ClaspGate(branch_dim)
            self.spectrogram_gate = ClaspGate(branch_dim)
            self.branch_weights = nn.Linear(2 * branch_dim, 2 * branch_dim)
            head_in = branch_dim
        else:
            head_in = 2 * branch_dim if config.fusion == "concat" else branch_dim
        hidden1, hidden2 = config.fusion_head_dims
        self.head = nn.Sequential(
            nn.Linear(head_in, hidden1), nn.BatchNorm1d(hidden1), nn.LeakyReLU(),
            nn.Linear(hidden1, hidden2), nn.LeakyReLU(),
            nn.Linear(hidden2, config.projection_dim),
        )

    def forward(self, speech_embeds, spectrogram_embeds):
        if self.fusion == "speech_only":
            return self.head(self.speech_mlp(speech_embeds))
        if self.fusion == "spectrogram_only":
            return self.head(self.spectrogram_mlp(spectrogram_embeds))
        speech = self.speech_mlp(speech_embeds)
        spectrogram = self.spectrogram_mlp(spectrogram_embeds)
        if self.fusion == "concat":
            return self.head(torch.cat([speech, spectrogram], dim=-1))
        speech, spectrogram = self.speech_gate(speech), self.spectrogram_gate(spectrogram)
        both = torch.stack([speech, spectrogram], dim=1)  # [batch, 2, dim]
        weights = self.branch_weights(both.flatten(1)).view_as(both).softmax(dim=1)
        return self.head((weights * both).sum(dim=1))


def build_speech_encoder(config: ClaspConfig) -> nn.Module:
    if config.speech_is_whisper:
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        return WhisperEncoder(config.speech_config)
    return AutoModel.from_config(config.speech_config)


def build_text_encoder(config: ClaspConfig) -> nn.Module:
    # Only the LaBSE-style "pooler" mode uses the transformer's pooler; without it the pooler
    # would be dead weight in every checkpoint.
    kwargs = {} if config.text_pooling == "pooler" else {"add_pooling_layer": False}
    try:
        return AutoModel.from_config(config.text_config, **kwargs)
    except TypeError:  # an architecture without the option
        return AutoModel.from_config(config.text_config)


def rename_old_audio_inputs(config: ClaspConfig, audio: dict, unknown: dict, caller: str) -> dict:
    """`audio` (the new names) with inputs given under this package's earlier names moved in, with a
    FutureWarning: `audio_attention_mask` (now `input_values_mask` / `input_features_mask`), the
    spectrogram picture as `input_features` (4-D; now `pixel_values`) and Whisper's log-mel as
    `input_values` (now `input_features`). Any other name in `unknown` is a TypeError."""

    def moved(old, new, value):
        warnings.warn(f"ClaspModel.{caller}: `{old}` is deprecated, pass `{new}` (transformers' name); "
                      "it will stop working in a future version", FutureWarning, stacklevel=3)
        audio[new] = value

    speech_name = "input_features" if config.speech_is_whisper else "input_values"
    if "audio_attention_mask" in unknown and audio[f"{speech_name}_mask"] is None:
        moved("audio_attention_mask", f"{speech_name}_mask", unknown.pop("audio_attention_mask"))
    if unknown:
        raise TypeError(f"ClaspModel.{caller}() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    if audio["input_features"] is not None and audio["input_features"].ndim == 4 and audio["pixel_values"] is None:
        moved("input_features (the spectrogram picture)", "pixel_values", audio["input_features"])
        audio["input_features"] = None
    if config.speech_is_whisper and audio["input_values"] is not None and audio["input_features"] is None:
        moved("input_values (Whisper's log-mel)", "input_features", audio["input_values"])
        audio["input_values"] = None
    return audio


def _modules_without(module: nn.Module, kept: list[nn.Module]) -> list[nn.Module]:
    """The largest submodules of `module` that contain none of `kept` (what is left frozen around them)."""
    if any(module is k for k in kept):
        return []
    if not any(m is k for m in module.modules() for k in kept):
        return [module]
    return [part for child in module.children() for part in _modules_without(child, kept)]


class ClaspPreTrainedModel(PreTrainedModel):
    config: ClaspConfig
    config_class = ClaspConfig
    base_model_prefix = "clasp"
    main_input_name = "input_values"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def _init_weights(self, module):
        # The backbones are PreTrainedModels and initialise themselves; this covers the fusion head.
        if isinstance(module, ClaspModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)
        elif isinstance(module, ClaspAttentionPooling):
            init.normal_(module.probe, mean=0.0, std=0.02)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if module.running_mean is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)


class ClaspModel(ClaspPreTrainedModel):
    def __init__(self, config: ClaspConfig):
        super().__init__(config)
        self.speech_model = build_speech_encoder(config)
        self.spectrogram_model = AutoModel.from_config(config.spectrogram_config)
        self.text_model = build_text_encoder(config)
        self.speech_pooler = (ClaspAttentionPooling(config.speech_hidden_size, config.speech_pooling_heads)
                              if config.speech_pooling == "attention" else None)
        self.fusion = ClaspFusion(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.main_input_name = "input_features" if config.speech_is_whisper else "input_values"
        self.post_init()
        self.freeze_backbones()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading materialises fresh parameters (requires_grad=True): freeze again afterwards.
        loaded = super().from_pretrained(*args, **kwargs)  # (model, loading_info) with output_loading_info=True
        model = (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_backbones()
        # A checkpoint saved while the clamp sat in forward may hold a value above the cap.
        with torch.no_grad():
            model.logit_scale.clamp_(max=model.config.logit_scale_max)
        return loaded

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        # The folder carries the flat code `auto_map` names; it is written whole or not at all.
        return save_with_code(self, super().save_pretrained, save_directory, push_to_hub, kwargs)

    def freeze_backbones(self):
        """No gradient for the backbones the config freezes, but for the speech encoder's last
        `config.speech_trainable_layers` layers (and no learnable scale without the contrastive loss)."""
        if self.config.freeze_speech_encoder and self.speech_model is not None:
            self.speech_model.requires_grad_(False)  # parameters outside any submodule too
            for module in self.trainable_speech_modules():
                module.requires_grad_(True)
            if self.has_speech_lora():  # the top layers' own weights stay as they are: only the adapters train
                for name, parameter in self.speech_model.named_parameters():
                    parameter.requires_grad_(".lora_" in name)
        for module in self._frozen_modules():
            module.requires_grad_(False)
        self.logit_scale.requires_grad_(self.config.loss == "contrastive")
        return self

    def _frozen_modules(self):
        """The frozen modules; with trainable top layers, the speech encoder's other parts."""
        speech = [self.speech_model]
        if self.config.speech_trainable_layers and self.speech_model is not None:
            speech = _modules_without(self.speech_model, self.trainable_speech_modules())
        frozen = (
            *((self.config.freeze_speech_encoder, module) for module in speech),
            (self.config.freeze_spectrogram_encoder, self.spectrogram_model),
            (self.config.freeze_text_encoder, self.text_model),
        )
        return [module for is_frozen, module in frozen if is_frozen and module is not None]  # None: not loaded (text only)

    def _speech_top_layers(self) -> tuple[list[nn.Module], nn.Module | None]:
        """The speech encoder's last `config.speech_trainable_layers` layers and the norm after them
        (Whisper's and the stable-layer-norm wav2vec2/HuBERT's final layer norm; None where the norm
        comes before the layers, as in wav2vec2-base)."""
        k = self.config.speech_trainable_layers
        if self.config.speech_is_whisper:
            return list(self.speech_model.layers[len(self.speech_model.layers) - k :]), self.speech_model.layer_norm
        encoder = self.speech_model.encoder
        norm = encoder.layer_norm if getattr(self.speech_model.config, "do_stable_layer_norm", False) else None
        return list(encoder.layers[len(encoder.layers) - k :]), norm

    def trainable_speech_modules(self) -> list[nn.Module]:
        """The speech-encoder modules that train with the head: the last `config.speech_trainable_layers`
        layers and the norm after them (none when k = 0)."""
        if not self.config.speech_trainable_layers:
            return []
        layers, norm = self._speech_top_layers()
        return [*layers, *([norm] if norm is not None else [])]

    def has_speech_lora(self) -> bool:
        """Whether LoRA adapters (modeling_clasp.lora.add_speech_lora, a training tool not shipped with the
        remote code) are in the speech encoder, not yet merged."""
        return self.speech_model is not None and any(
            type(module).__module__.startswith("peft.") for module in self.speech_model.modules())

    def _speech_state_index(self) -> int:
        """Which of the encoder's hidden states `get_speech_frames` returns: `config.speech_layer`, or
        with k trainable layers the one entering layer L-k (index -1-k of L+1 states)."""
        k = self.config.speech_trainable_layers
        return -1 - k if k else self.config.speech_layer

    def run_trainable_layers(self, speech_frames, speech_frame_weights) -> torch.Tensor:
        """The speech encoder's last `config.speech_trainable_layers` layers (and its final norm) on
        `speech_frames` `[batch, windows, hidden]`; windows of weight 0 (padding) are masked in
        attention. Returns `[batch, windows, hidden]`; the frames unchanged when k = 0."""
        if not self.config.speech_trainable_layers:
            return speech_frames
        layers, norm = self._speech_top_layers()
        hidden = speech_frames.to(self.speech_model.dtype)  # the layers may be int8 ONNX Runtime sessions, with no parameters
        keep = (speech_frame_weights > 0)[:, None, None, :]
        attention_mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        attention_mask = attention_mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)
        for layer in layers:
            hidden = layer(hidden, attention_mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return norm(hidden) if norm is not None else hidden

    def train(self, mode: bool = True):
        # A frozen backbone keeps its batch-norm statistics and runs without dropout.
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if self.config.speech_trainable_layers and self.config.freeze_speech_encoder and self.speech_model is not None:
            # The containers of the trainable top layers too: their training flag is what turns on
            # wav2vec2's/HuBERT's SpecAugment and layerdrop and Whisper's input dropout in the frozen part.
            self.speech_model.eval()
            for module in self.trainable_speech_modules():
                module.train(mode)
        return self

    # ---- speech branch -------------------------------------------------------------------

    def _whisper_hidden_states(self, input_features, frame_mask):
        """Whisper's encoder on the clip's real length, padding masked out; with
        `config.speech_whisper_padding="max_length"`, on all 30 s unmasked.

        transformers' WhisperEncoder.forward insists on 30 s of (mostly padding) frames; running
        its parts directly costs a fraction of that for short clips. Padded frames are zeroed
        before each convolution and masked in attention, so a clip's output does not depend on
        what it is batched with. "max_length" computes what WhisperEncoder.forward does (tested),
        on the processor's 30-s log-mel; `frame_mask` then only says which frames are pooled.
        Returns the hidden states (`[batch, frames / 2, d_model]` each) and the encoder frames' mask.
        """
        encoder = self.speech_model
        max_frames = encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
        if input_features.shape[-1] > max_frames:
            raise ValueError(
                f"Whisper encodes at most {max_frames} mel frames (30 s); got {input_features.shape[-1]}. "
                "Split long audio into windows (clasp embed does this)."
            )
        padded = self.config.speech_whisper_padding == "max_length"
        if padded and input_features.shape[-1] != max_frames:
            raise ValueError(
                f"speech_whisper_padding='max_length': Whisper runs on {max_frames} mel frames (30 s), got "
                f"input_features of {input_features.shape[-1]}; use a processor with whisper_padding='max_length'"
            )
        if frame_mask is None:
            frame_mask = torch.ones(input_features.shape[0], input_features.shape[-1], device=input_features.device)
        seen = torch.ones_like(frame_mask) if padded else frame_mask  # the frames the encoder sees; frame_mask: those pooled
        mask = seen.to(input_features.dtype).unsqueeze(1)
        hidden = F.gelu(encoder.conv1(input_features * mask)) * mask
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        frame_mask = frame_mask[:, :: encoder.conv2.stride[0]]
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
        keep = seen[:, :: encoder.conv2.stride[0]][:, None, None, :].bool()  # all frames (a zero mask) when padded
        attention_mask = torch.zeros(keep.shape, dtype=hidden.dtype, device=hidden.device)
        attention_mask = attention_mask.masked_fill(~keep, torch.finfo(hidden.dtype).min)
        states = [hidden]
        depth = len(encoder.layers) - self.config.speech_trainable_layers  # the rest run in run_trainable_layers
        for layer in encoder.layers[:depth]:
            hidden = layer(hidden, attention_mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            states.append(hidden)
        if depth == len(encoder.layers):
            states[-1] = encoder.layer_norm(hidden)
        return states, frame_mask

    def get_speech_frames(self, speech_inputs, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The speech encoder's hidden states (`config.speech_layer`; with `config.speech_trainable_layers`
        = k, the state entering layer L-k, where Whisper stops) averaged in windows of
        `config.speech_frame_stride` frames: `[batch, windows, hidden]`, and each window's share of
        real (unpadded) frames `[batch, windows]`. What `clasp features` caches for the speech branch.

        `speech_inputs`: `input_values` `[batch, samples]` (waveform encoders) or `input_features`
        `[batch, n_mels, frames]` (Whisper); `attention_mask`: 1 for real, 0 for (trailing) padding.
        A clip's frames do not depend on its batch-mates, whatever the encoder (tested).
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_speech_encoder):
            if self.config.speech_is_whisper:
                states, frame_mask = self._whisper_hidden_states(speech_inputs, attention_mask)
                hidden = states[-1 if self.config.speech_trainable_layers else self.config.speech_layer]
            elif attention_mask is not None and getattr(self.speech_model.config, "feat_extract_norm", None) == "group":
                hidden, frame_mask = self._unpadded_hidden_states(speech_inputs, attention_mask)
            else:
                hidden = self._speech_hidden_states(speech_inputs, attention_mask)
                frame_mask = None
                if attention_mask is not None:
                    frame_mask = self.speech_model._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
            return window_mean(hidden, frame_mask, self.config.speech_frame_stride)

    def _speech_hidden_states(self, input_values, attention_mask):
        index = self._speech_state_index()
        outputs = self.speech_model(input_values, attention_mask=attention_mask, output_hidden_states=index != -1)
        return outputs.last_hidden_state if index == -1 else outputs.hidden_states[index]

    def _unpadded_hidden_states(self, input_values, attention_mask):
        """Hidden states `[batch, frames, hidden]` and frame mask of a group-normalised encoder, each
        clip run at its real length (clips of equal length together).

        wav2vec2-base, HuBERT-base, WavLM (`feat_extract_norm="group"`) normalise each channel of
        their first convolution over the whole time axis, padding included: padded, a clip gets
        another embedding (cosine 0.987 to itself alone, wav2vec2-base). The layer-norm variants
        (HuBERT-large, `"layer"`) normalise each frame and honour the mask, so they run padded.
        """
        lengths = attention_mask.sum(-1)
        frame_lengths = self.speech_model._get_feat_extract_output_lengths(lengths)
        hidden = None
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            states = self._speech_hidden_states(input_values[rows, :length], None)
            if hidden is None:
                hidden = states.new_zeros(len(lengths), int(frame_lengths.max()), states.shape[-1])
            hidden[rows, : states.shape[1]] = states
        frame_mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < frame_lengths[:, None]
        return hidden, frame_mask.long()

    def pool_speech(self, speech_frames, speech_frame_weights) -> torch.Tensor:
        """One L2-normalised vector `[batch, hidden]` per clip from its frames (`get_speech_frames`):
        the trainable top layers (`config.speech_trainable_layers`, if any), then `config.speech_pooling`."""
        speech_frames = self.run_trainable_layers(speech_frames, speech_frame_weights)
        if self.speech_pooler is None:
            pooled = masked_mean(speech_frames, speech_frame_weights)
        else:
            pooled = self.speech_pooler(speech_frames.to(self.speech_pooler.probe.dtype), speech_frame_weights)
        return F.normalize(pooled.float(), dim=-1)

    def get_speech_embeds(self, speech_inputs, attention_mask=None) -> torch.Tensor:
        """Speech-encoder features of each clip (see `get_speech_frames`), pooled over its real frames and L2-normalised."""
        return self.pool_speech(*self.get_speech_frames(speech_inputs, attention_mask))

    def get_spectrogram_embeds(self, pixel_values) -> torch.Tensor:
        """Pooled spectrogram-CNN features `[batch, cnn_hidden]` of each clip's log-mel picture
        (`pixel_values` `[batch, 3, image_size, image_size]`), L2-normalised."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_spectrogram_encoder):
            pooled = self.spectrogram_model(pixel_values=pixel_values).pooler_output
            return F.normalize(pooled.flatten(1).float(), dim=-1)

    @can_return_tuple
    def get_audio_features(
        self,
        input_values=None,
        input_values_mask=None,
        input_features=None,
        input_features_mask=None,
        pixel_values=None,
        speech_embeds=None,
        spectrogram_embeds=None,
        speech_frames=None,
        speech_frame_weights=None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """CLASP audio embeddings, as transformers 5's ClapModel.get_audio_features returns them: an
        output whose `pooler_output` is `[batch, projection_dim]`, L2-normalised (a tuple with
        `return_dict=False`).

        Pass the processor's audio outputs (`input_values` + `input_values_mask` for waveform
        encoders, `input_features` + `input_features_mask` for Whisper; `pixel_values`), or the
        branch features cached from an earlier run: `speech_frames` and `speech_frame_weights`
        (from `get_speech_frames`) or, for "mean" pooling, the pooled `speech_embeds`; and
        `spectrogram_embeds`. Unknown keyword arguments are a TypeError.
        """
        audio = dict(input_values=input_values, input_values_mask=input_values_mask, input_features=input_features,
                     input_features_mask=input_features_mask, pixel_values=pixel_values)
        audio = rename_old_audio_inputs(self.config, audio, kwargs, "get_audio_features")
        audio_embeds = self._audio_forward(audio, speech_embeds, spectrogram_embeds, speech_frames, speech_frame_weights)[0]
        return BaseModelOutputWithPooling(pooler_output=audio_embeds)

    def _audio_forward(self, audio, speech_embeds, spectrogram_embeds, speech_frames=None, speech_frame_weights=None):
        speech_name = "input_features" if self.config.speech_is_whisper else "input_values"
        other_name = "input_values" if self.config.speech_is_whisper else "input_features"
        if audio[other_name] is not None:
            raise ValueError(f"this model's speech encoder takes `{speech_name}`, not `{other_name}` (use its ClaspProcessor)")
        if speech_embeds is not None and self.speech_pooler is not None:
            raise ValueError("this model pools speech frames by attention: pass `speech_frames` and "
                             "`speech_frame_weights` (or audio), not pooled `speech_embeds`.")
        if speech_embeds is None and self.config.uses_speech:
            if speech_frames is not None:
                if speech_frame_weights is None:
                    raise ValueError("`speech_frames` need their `speech_frame_weights` (from get_speech_frames).")
                speech_embeds = self.pool_speech(speech_frames, speech_frame_weights)
            elif audio[speech_name] is None:
                raise ValueError(f"get_audio_features needs `{speech_name}` (from ClaspProcessor), "
                                 "`speech_frames` or `speech_embeds`.")
            else:
                speech_embeds = self.get_speech_embeds(audio[speech_name], audio[f"{speech_name}_mask"])
        if spectrogram_embeds is None and self.config.uses_spectrogram:
            if audio["pixel_values"] is None:
                raise ValueError("get_audio_features needs `pixel_values` (from ClaspProcessor) or `spectrogram_embeds`.")
            spectrogram_embeds = self.get_spectrogram_embeds(audio["pixel_values"])
        head_dtype = self.fusion.head[0].weight.dtype
        # A branch the fusion does not use (speech_only / spectrogram_only) is neither run nor required.
        speech = F.normalize(speech_embeds, dim=-1).to(head_dtype) if self.config.uses_speech else None
        spectrogram = F.normalize(spectrogram_embeds, dim=-1).to(head_dtype) if self.config.uses_spectrogram else None
        return F.normalize(self.fusion(speech, spectrogram).float(), dim=-1), speech_embeds, spectrogram_embeds

    # ---- text branch ---------------------------------------------------------------------

    @can_return_tuple
    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None) -> BaseModelOutputWithPooling:
        """The sentence encoder's embedding, pooled and normalised exactly as sentence-transformers does.

        As transformers 5's ClapModel.get_text_features: the text model's output with `pooler_output`
        replaced by the embedding `[batch, projection_dim]` (a tuple with `return_dict=False`).
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text_encoder):
            kwargs = {"attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            outputs = self.text_model(input_ids=input_ids, **kwargs)
            if self.config.text_pooling == "mean":
                embeds = masked_mean(outputs.last_hidden_state, attention_mask)
            elif self.config.text_pooling == "cls":
                embeds = outputs.last_hidden_state[:, 0]
            else:
                embeds = outputs.pooler_output
            embeds = embeds.float()
            embeds = F.normalize(embeds, dim=-1) if self.config.text_normalize else embeds
            return BaseModelOutputWithPooling(last_hidden_state=outputs.last_hidden_state, pooler_output=embeds)

    # ---- both ----------------------------------------------------------------------------

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        input_values=None,
        input_values_mask=None,
        input_features=None,
        input_features_mask=None,
        pixel_values=None,
        speech_embeds=None,
        spectrogram_embeds=None,
        speech_frames=None,
        speech_frame_weights=None,
        text_embeds=None,
        return_loss=None,
        return_dict=None,
        pair_group_ids=None,
        **kwargs,
    ) -> ClaspOutput | tuple:
        """Takes what ClaspProcessor returns (see `get_audio_features` for the audio names), or
        cached features; `**kwargs` only carries deprecated names (a warning), anything else is a TypeError.
        `pair_group_ids` `[batch]` (optional, with `return_loss`): the rows' sentence groups, whose
        other readings the loss does not count as negatives (see `clasp_loss`)."""
        audio = dict(input_values=input_values, input_values_mask=input_values_mask, input_features=input_features,
                     input_features_mask=input_features_mask, pixel_values=pixel_values)
        audio = rename_old_audio_inputs(self.config, audio, kwargs, "forward")
        has_audio = any(x is not None for x in (audio["input_values"], audio["input_features"], audio["pixel_values"],
                                                speech_embeds, speech_frames, spectrogram_embeds))
        has_text = input_ids is not None or text_embeds is not None
        audio_embeds = None
        if has_audio:
            audio_embeds, speech_embeds, spectrogram_embeds = self._audio_forward(
                audio, speech_embeds, spectrogram_embeds, speech_frames, speech_frame_weights,
            )
        if text_embeds is None and input_ids is not None:
            text_embeds = self.get_text_features(input_ids, attention_mask, token_type_ids).pooler_output
        elif text_embeds is not None:
            text_embeds = F.normalize(text_embeds.float(), dim=-1) if self.config.text_normalize else text_embeds.float()

        logits_per_audio = logits_per_text = loss = None
        if has_audio and has_text:
            logit_scale = self.logit_scale_value()
            logits_per_audio = logit_scale * audio_embeds @ text_embeds.T
            logits_per_text = logits_per_audio.T
            if return_loss:
                loss = clasp_loss(audio_embeds, text_embeds, logit_scale, self.config, pair_group_ids)
        output = ClaspOutput(
            loss=loss,
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_text,
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            speech_embeds=speech_embeds,
            spectrogram_embeds=spectrogram_embeds,
        )
        return output if return_dict is not False else output.to_tuple()

    def logit_scale_value(self) -> torch.Tensor:
        if self.config.loss == "contrastive_fixed":
            return torch.tensor(self.config.fixed_logit_scale, device=self.logit_scale.device)
        # Not clamped here (its gradient would be 0 above the cap): the trainer clamps the parameter
        # after each optimizer step, as open_clip does, and from_pretrained clamps what it loads.
        return self.logit_scale.exp()


__all__ = ["ClaspModel", "ClaspPreTrainedModel", "ClaspOutput", "ClaspFusion", "ClaspAttentionPooling", "clasp_loss",
           "gather_with_grad"]
