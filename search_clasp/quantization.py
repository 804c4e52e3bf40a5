"""int8 inference on the CPU for `clasp embed | index | eval --quantize int8`.

Dynamic quantization (torch.ao.quantization.quantize_dynamic, PyTorch's own): every nn.Linear of
the speech and text encoders keeps int8 weights (one scale per tensor) and quantizes its input
on the fly, batch by batch, so the matrix products run in int8 (fbgemm / oneDNN kernels). Only the
backbones: they hold nearly all the compute, while the fusion head is small and is the trained
part whose errors would reach the embedding undiluted (the spectrogram CNN is convolutions,
which dynamic quantization leaves alone). Chosen by measurement on the real Whisper-base encoder
(bench/bench_quantize.py): torchao's Int8DynamicActivationInt8Weight without torch.compile was
slower than fp32 on this CPU; PyTorch's dynamic int8 was faster, at cosine >= 0.99 to fp32.
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
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch.ao's deprecation notices (its successor, torchao, was slower here)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in QUANTIZED_PARTS:
            setattr(model, name, quantize_dynamic(getattr(model, name).float(), {torch.nn.Linear}, dtype=torch.qint8))
    return model


__all__ = ["QUANTIZE_CHOICES", "quantize_model"]
