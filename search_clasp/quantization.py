"""int8 inference on the CPU for `clasp embed | index | eval --quantize int8`: the audio encoders.

Each part runs where it measured fastest at equal accuracy on this 2-core CPU (bench/bench_quantize.py,
2 threads; retrieval on the demo's validation split), through two maintained libraries:
  * Whisper's encoder layers (most of the audio work): ONNX Runtime, int8. Each layer is exported
    with torch.onnx.export and quantized with onnxruntime.quantization.quantize_dynamic (int8
    weights, one scale per output channel; activations quantized on the fly, one scale per batch,
    MatMulInteger kernels, VNNI where the CPU has it).
  * The spectrogram CNN: ONNX Runtime in fp32. Its convolutions ran EfficientNet-Lite0 3.4x faster
    than PyTorch's here (batch of 8, 224 x 224), cosine 1.0000 to torch. (ONNX Runtime's dynamic
    quantization of convolutions needs constant weights, which the exported squeeze-excite blocks
    do not have.) A CNN that does not export stays in torch, with a warning.
  * HuBERT / wav2vec2 speech encoders: PyTorch's dynamic int8 nn.Linear layers
    (torch.ao.quantization.quantize_dynamic, fbgemm / oneDNN).
In every int8 encoder the feed-forward down-projections (more inputs than outputs: Whisper's fc2,
wav2vec2's output_dense) stay fp32: their inputs, after GELU, carry outliers that one activation
scale per batch rounds away. With Whisper's fc2 in int8 the demo model's validation embeddings fell
to cosine 0.90 on average to fp32 (0.40 at worst) and audio -> text mean rank rose 17.9 -> 21.6;
with it in fp32, 0.996 (0.97 at worst) and 17.8.
In fp32: Whisper's two convolutions and final layer norm, the fusion head (small, and the trained
part), and the text encoder: a query embeds in milliseconds, and int8 moved the text embeddings
(cosine 0.989 at worst) for no time that matters.
Measured against: PyTorch's dynamic int8 on every encoder (the previous `--quantize int8`: 1.26x
fp32 clips/s) and torchao's Int8DynamicActivationInt8WeightConfig without torch.compile (slower than
fp32 here). ONNX Runtime's threads do not spin-wait between runs (they would take the cores torch
needs next; with spinning the whole was 1.3x fp32 instead of 1.7x). With int8 activations a clip's
embedding depends slightly on its batch-mates (one activation scale covers the batch), within the
rounding that the cosine to fp32 measures.
"""

import logging
import os
import tempfile
import warnings

import torch
from torch import nn

QUANTIZE_CHOICES = ("int8",)


def onnx_runtime_session(module: nn.Module, example: tuple, input_names: list[str], dynamic_axes: dict, *,
                         int8: bool, threads: int, keep_fp32: tuple = ()):
    """`module` (eval mode) exported with torch.onnx.export, quantized to dynamic int8 by ONNX
    Runtime when `int8` (but the ONNX nodes named in `keep_fp32`), loaded in an
    onnxruntime.InferenceSession on `threads` CPU threads.
    The ONNX files live in a temporary folder only while the session is built."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="clasp-onnx-") as folder:
        path = os.path.join(folder, "part.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), example, path, input_names=input_names, output_names=["output"],
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
            if int8:
                import onnx

                missing = set(keep_fp32) - {node.name for node in onnx.load(path).graph.node}
                if missing:  # the exporter named them otherwise: they would be quantized without a word
                    raise RuntimeError(f"nodes to keep in fp32 not in the exported graph: {sorted(missing)}")
                before = logging.root.manager.disable
                logging.disable(logging.WARNING)  # its advice (to run its pre-processing) on the root logger, once per layer
                try:
                    quantize_dynamic(path, path + ".int8", weight_type=QuantType.QInt8, per_channel=True,
                                     nodes_to_exclude=list(keep_fp32))
                finally:
                    logging.disable(before)
                path += ".int8"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def refuse_saving(module, prefix, keep_vars):
    """A state_dict pre-hook on the int8 parts: they hold ONNX Runtime sessions or packed int8
    weights, not the fp32 weights a CLASP checkpoint holds (save_pretrained would write one
    without them, or fail half-way)."""
    raise RuntimeError("a --quantize int8 model cannot be saved: save the fp32 model it was made from "
                       f"(its {prefix.rstrip('.') or type(module).__name__} is an inference-only int8 part)")


class OnnxRuntimePart(nn.Module):
    """An ONNX Runtime session (`self.session`) in a torch model, on the CPU. Inference only: its output
    carries no gradient, so it refuses to run in training mode with gradients on (it would silently
    not train), and inputs on another device (its CPU output would meet the GPU later); it is never
    saved (`refuse_saving`), copied or pickled (a session cannot be)."""

    def __init__(self):
        super().__init__()
        self.train(False)
        self.register_state_dict_pre_hook(refuse_saving)

    def run_session(self, **inputs) -> torch.Tensor:
        """The session's output for `inputs` (tensors, sent as float32 on the CPU), as a float32 CPU tensor."""
        if self.training and torch.is_grad_enabled():
            raise RuntimeError(f"{type(self).__name__} (--quantize int8) runs inference only: no gradient flows "
                               "through it; train the fp32 model")
        elsewhere = sorted({str(value.device) for value in inputs.values() if value.device.type != "cpu"})
        if elsewhere:  # e.g. a quantized model that ClaspEmbedder or .to() moved to a GPU
            raise RuntimeError(f"{type(self).__name__} (--quantize int8) runs on the CPU, not on {', '.join(elsewhere)}: "
                               "keep the quantized model on the CPU (device='cpu')")
        feeds = {name: value.detach().float().cpu().numpy() for name, value in inputs.items()}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def __getstate__(self):
        raise TypeError(f"{type(self).__name__} holds an ONNX Runtime session: it cannot be copied or pickled; "
                        "quantize a copy of the fp32 model (quantize_model(copy.deepcopy(model), 'int8'))")


class _LayerOutput(nn.Module):
    """An encoder layer with a tensor output (some transformers versions return a tuple)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, attention_mask):
        output = self.layer(hidden_states, attention_mask)
        return output[0] if isinstance(output, tuple) else output


class OnnxRuntimeEncoderLayer(OnnxRuntimePart):
    """A transformer encoder layer in ONNX Runtime int8, called as the torch layer was:
    `layer(hidden_states [batch, frames, hidden], attention_mask [batch, 1, 1 or frames, frames],
    additive) -> hidden_states [batch, frames, hidden]`, float32 on the CPU. Inference only (OnnxRuntimePart)."""

    def __init__(self, layer: nn.Module, hidden_size: int, threads: int):
        super().__init__()
        example = (torch.zeros(2, 8, hidden_size), torch.zeros(2, 1, 1, 8))
        # torch.onnx.export names a linear layer's product after its module path: /layer/fc2/MatMul.
        self.fp32_nodes = tuple(f"/layer/{name.replace('.', '/')}/MatMul" for name, part in layer.named_modules()
                                if isinstance(part, nn.Linear) and part.in_features > part.out_features)
        self.session = onnx_runtime_session(
            _LayerOutput(layer), example, ["hidden_states", "attention_mask"],
            {"hidden_states": {0: "batch", 1: "frames"}, "attention_mask": {0: "batch", 2: "query_frames", 3: "frames"},
             "output": {0: "batch", 1: "frames"}}, int8=True, threads=threads, keep_fp32=self.fp32_nodes)

    def forward(self, hidden_states, attention_mask, **unused):
        return self.run_session(hidden_states=hidden_states, attention_mask=attention_mask)


class _PooledOutput(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).pooler_output


class OnnxRuntimeImageModel(OnnxRuntimePart):
    """An image backbone in ONNX Runtime (fp32), called as the transformers model was:
    `model(pixel_values=[batch, channels, height, width]).pooler_output` (float32, CPU). Inference only (OnnxRuntimePart)."""

    def __init__(self, model: nn.Module, image_size: int, threads: int):
        super().__init__()
        self.config = model.config
        example = (torch.zeros(2, getattr(model.config, "num_channels", 3), image_size, image_size),)
        self.session = onnx_runtime_session(_PooledOutput(model), example, ["pixel_values"],
                                            {"pixel_values": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
                                            int8=False, threads=threads)

    def forward(self, pixel_values=None, **unused):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=self.run_session(pixel_values=pixel_values))


def torch_int8_linear(part: nn.Module) -> nn.Module:
    """`part` with PyTorch dynamic int8 nn.Linear layers (one weight scale per output channel), but
    the down-projections (in_features > out_features), which stay fp32 (see the module docstring)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    part = part.float()
    layers = {layer_name: per_channel_dynamic_qconfig for layer_name, layer in part.named_modules()
              if isinstance(layer, nn.Linear) and layer.in_features <= layer.out_features}
    with warnings.catch_warnings():  # torch.ao's deprecation notices (its successor, torchao, was slower here)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(part, layers, dtype=torch.qint8)


def check_quantize(quantize: str | None, device=None):
    """Raise what `quantize_model(model, quantize, device)` would raise before it touches the model:
    ValueError for a `quantize` other than None / "int8" or a `device` other than the CPU, ImportError
    naming the extra when onnx / onnxruntime are missing. For callers that write something first."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    if device is not None and str(device).split(":")[0] != "cpu":
        raise ValueError(f"--quantize {quantize} runs on the CPU, not on --device {device}")
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes with it)
        import onnxruntime  # noqa: F401
    except ImportError as error:
        raise ImportError(f"--quantize {quantize} needs ONNX Runtime: pip install 'clasp-hf[int8]' ({error})") from error


def quantize_model(model, quantize: str | None, device=None):
    """`model` (a ClaspModel on the CPU) in eval mode with its audio encoders as the module docstring
    says, in place; the embeddings stay float32 `[batch, projection_dim]`.

    `quantize`: None (the model is returned as it is) or "int8". Raises ValueError for another value,
    or when `device` is not the CPU (the int8 kernels are CPU kernels); ImportError naming the extra
    when onnx / onnxruntime are missing (see `check_quantize`).
    ONNX Runtime's sessions take torch.get_num_threads() when they are made (one pool a session):
    set torch's threads (torch.set_num_threads, OMP_NUM_THREADS) before; a later change reaches only
    the parts that stay in torch.
    The result is for inference: saving it (save_pretrained, state_dict) is a RuntimeError, copying or
    pickling it a TypeError, and running its ONNX Runtime layers in training mode with gradients (they
    have no parameters to train) or on inputs off the CPU a RuntimeError.
    """
    if quantize is None:
        return model
    check_quantize(quantize, device)
    model.eval()
    threads = torch.get_num_threads()
    whisper = getattr(model.config, "speech_is_whisper", False) and model.speech_model is not None
    with torch.no_grad():
        if whisper:
            encoder = model.speech_model.float()
            for index, layer in enumerate(encoder.layers):
                encoder.layers[index] = OnnxRuntimeEncoderLayer(layer, encoder.config.d_model, threads)
        if getattr(model, "spectrogram_model", None) is not None:
            try:
                model.spectrogram_model = OnnxRuntimeImageModel(model.spectrogram_model.float(),
                                                                model.config.spectrogram_image_size, threads)
            except Exception as error:  # an architecture the exporter cannot trace: torch still computes it
                warnings.warn(f"--quantize {quantize}: the spectrogram CNN stays in torch ({type(error).__name__}: {error})")
    if not whisper and getattr(model, "speech_model", None) is not None:
        model.speech_model = torch_int8_linear(model.speech_model)
        model.speech_model.register_state_dict_pre_hook(refuse_saving)
    return model


__all__ = ["QUANTIZE_CHOICES", "check_quantize", "OnnxRuntimeEncoderLayer", "OnnxRuntimeImageModel", "OnnxRuntimePart", "quantize_model", "torch_int8_linear"]
