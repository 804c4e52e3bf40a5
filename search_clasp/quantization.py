"""int8 inference on the CPU for `clasp embed | index | eval --quantize int8`.

Dynamic quantization (torch.ao.quantization.quantize_dynamic, PyTorch's own): the nn.Linear layers
of the speech and text encoders keep int8 weights (one scale per output channel) and quantize their
input on the fly (one scale per batch), so the matrix products run in int8 (fbgemm / oneDNN
kernels). Left in fp32:
  * the feed-forward down-projections (more inputs than outputs: Whisper's fc2, BERT's
    output.dense): their inputs, after GELU, carry outliers that one activation scale per batch
    rounds away (with them in int8, Whisper-base embeddings fell to cosine 0.97 to fp32; without,
    0.997, at about the same speed);
  * the fusion head: small, and the trained part, whose errors would reach the embedding
    undiluted; the spectrogram CNN is convolutions, which dynamic quantization leaves alone.
Chosen by measurement on the real Whisper-base encoder (bench/bench_quantize.py, 2 threads):
torchao's Int8DynamicActivationInt8WeightConfig without torch.compile was slower than fp32 on this
CPU (0.84x); PyTorch's dynamic int8 was faster (see bench/results/bench_quantize.json).
"""

import warnings

QUANTIZE_CHOICES = ("int8",)
QUANTIZED_PARTS = ("speech_model", "text_model")


def quantize_model(model, quantize: str | None, device=None):
    """`model` (a ClaspModel on the CPU) with int8 dynamic linear layers in its encoders, in place.

    `quantize`: None (the model is returned as it is) or "int8". Raises ValueError for another value,
    or when `device` is not the CPU (the int8 kernels are CPU kernels).
    """
    if quantize is None:
        return model
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if device is not None and str(device).split(":")[0] != "cpu":
        raise ValueError(f"--quantize {quantize} runs on the CPU, not on --device {device}")
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices (its successor, torchao, was slower here)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in QUANTIZED_PARTS:
            part = getattr(model, name).float()
            layers = {layer_name: per_channel_dynamic_qconfig for layer_name, layer in part.named_modules()
                      if isinstance(layer, torch.nn.Linear) and layer.in_features <= layer.out_features}
            setattr(model, name, quantize_dynamic(part, layers, dtype=torch.qint8))
    return model


__all__ = ["QUANTIZE_CHOICES", "quantize_model"]
