"""LoRA adapters on the speech encoder's trained top layers (`train_accelerate.py --speech_lora_rank`).

A training tool: PEFT is needed here only (`pip install 'clasp-hf[lora]'`), and this module is not part of
the flat remote code of a saved folder; `merge_speech_lora` folds the adapters into the weights before a
model is saved, so a saved CLASP model never holds them.
"""

from torch import nn


def add_speech_lora(model, rank: int, alpha: float):
    """LoRA adapters (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models"; PEFT's
    `inject_adapter_in_model`) on every linear layer of the ClaspModel's trainable top speech layers
    (`config.speech_trainable_layers` = k): W x + (alpha / rank) B A x, B zero at first (no adapter
    dropout; `train_accelerate.py` gives alpha = 2 x rank unless told). The top
    layers' own weights and the encoder's final norm freeze (`model.freeze_backbones()` keeps it so);
    only the adapters (and the head) train. ValueError for k = 0 or a rank < 1; ImportError naming the
    pip command without PEFT. Returns the model."""
    if not model.config.speech_trainable_layers or model.speech_model is None:
        raise ValueError("LoRA adapts the speech encoder's trainable top layers: set speech_trainable_layers "
                         "(train_accelerate.py --speech_trainable_layers K) first")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be an int of at least 1, got {rank!r}")
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError("LoRA adapters need PEFT: pip install 'clasp-hf[lora]' (or pip install peft)") from error

    top = {id(module) for layer in model._speech_top_layers()[0] for module in layer.modules()}
    targets = [name for name, module in model.speech_model.named_modules()
               if id(module) in top and isinstance(module, nn.Linear)]
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model.speech_model)  # marks only the adapters of speech_model trainable
    return model.freeze_backbones()


def merge_speech_lora(model):
    """Fold the adapters of `add_speech_lora` into their linear layers and remove them (as PEFT's
    `merge_and_unload`): the state dict has a plain model's names again. Returns the model."""
    if not model.has_speech_lora():
        return model
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.speech_model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)  # ValueError on NaN weights instead of saving them
            parent, _, attribute = name.rpartition(".")
            setattr(model.speech_model.get_submodule(parent), attribute, module.get_base_layer())
    return model
