"""int8 against fp32 audio embedding on the CPU (`--quantize int8`), side by side on the same clips.

    .venv/bin/python bench/bench_quantize.py [--clips 96] [--threads 2] [--model offline-base]

The model: the offline-base preset (the real Whisper-base encoder, EfficientNet-Lite0 and
multilingual-e5-small; the fusion head untrained, which changes neither the time nor the cosine's
meaning: both sides share it). The clips: speech-like (bench.common.speech_like_clips), 2-8 s.
Each contender embeds the clips through ClaspEmbedder.embed_waveforms (feature extraction
included, batches of 8), batch by batch in turn, so that a busy neighbour slows every contender
alike; clips/s is over the whole set, the faster of two passes. Cosine: each clip's int8 embedding against its fp32 one.
Contenders: fp32; `--quantize int8` (search_clasp.quantization: Whisper's encoder layers in ONNX
Runtime dynamic int8 but their down-projections, the spectrogram CNN in ONNX Runtime fp32, the
text encoder in fp32); what the CNN's runtime alone gives (fp32 everywhere, the CNN in ONNX
Runtime: no quantization); the alternatives it was chosen against: PyTorch dynamic int8 linear layers in both encoders (the previous
`--quantize int8`) and, when torchao is importable, torchao's Int8DynamicActivationInt8WeightConfig
on every linear layer (eager, no torch.compile). The time to quantize (export + quantize the layers
once per process) is reported apart.
"""

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import print_result, speech_like_clips, write_result  # noqa: E402

TARGET_SPEEDUP, TARGET_COSINE = 1.8, 0.99
BATCH = 8
ROUNDS = 2
QUANTIZED_PARTS = ("speech_model", "text_model")


def torch_int8(model):
    from search_clasp.quantization import torch_int8_linear

    for name in QUANTIZED_PARTS:
        setattr(model, name, torch_int8_linear(getattr(model, name)))
    return model


def torchao_int8(model):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    for name in QUANTIZED_PARTS:  # every linear layer: torchao quantizes activations per token, outliers stay local
        quantize_(getattr(model, name), Int8DynamicActivationInt8WeightConfig())
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="offline-base", help="a preset or a CLASP folder")
    args = parser.parse_args()
    import torch

    from backbones_clasp.checkpoints import load_model_and_processor
    from search_clasp.embedding import ClaspEmbedder
    from search_clasp.quantization import OnnxRuntimeImageModel, quantize_model

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load = [os.getloadavg()]
    model, processor = load_model_and_processor(args.model)
    begin = time.perf_counter()
    ours = quantize_model(copy.deepcopy(model), "int8")
    quantize_s = time.perf_counter() - begin
    cnn_only = copy.deepcopy(model)
    cnn_only.spectrogram_model = OnnxRuntimeImageModel(cnn_only.spectrogram_model, model.config.spectrogram_image_size,
                                                       torch.get_num_threads())
    models = {"fp32": model.eval(), "int8 (--quantize int8)": ours,
              "fp32, the CNN in ONNX Runtime (no int8)": cnn_only,
              "int8 (torch dynamic, both encoders)": torch_int8(copy.deepcopy(model))}
    try:
        models["int8 (torchao, eager)"] = torchao_int8(copy.deepcopy(model))
    except ImportError:
        pass
    embedders = {name: ClaspEmbedder(m, processor, batch_size=BATCH, device="cpu") for name, m in models.items()}
    clips = [torch.from_numpy(clip) for clip in speech_like_clips(args.clips, 2.0, 8.0)]
    seconds = {name: float("inf") for name in embedders}
    for _ in range(ROUNDS):  # each contender's faster pass over the whole set
        passed, embeds = {name: 0.0 for name in embedders}, {name: [] for name in embedders}
        for first in range(0, len(clips), BATCH):
            for name, embedder in embedders.items():
                begin = time.perf_counter()
                embeds[name].append(embedder.embed_waveforms(clips[first : first + BATCH]))
                passed[name] += time.perf_counter() - begin
        seconds = {name: min(seconds[name], passed[name]) for name in embedders}
    load.append(os.getloadavg())
    reference = torch.cat(embeds["fp32"])
    rows, targets = [], []
    for name in embedders:
        cosine = torch.nn.functional.cosine_similarity(torch.cat(embeds[name]), reference)
        speedup = seconds["fp32"] / seconds[name]
        rows.append([name, len(clips) / seconds[name], speedup, float(cosine.mean()), float(cosine.min())])
        if name.startswith("int8 (--quantize"):
            targets += [{"target": f"--quantize int8 >= {TARGET_SPEEDUP}x fp32 clips/s", "value": f"{speedup:.2f}x",
                         "met": bool(speedup >= TARGET_SPEEDUP)},
                        {"target": f"cosine to fp32 >= {TARGET_COSINE} (every clip)", "value": f"min {float(cosine.min()):.4f}",
                         "met": bool(cosine.min() >= TARGET_COSINE)}]
    audio_s = sum(clip.shape[0] for clip in clips) / 16000
    result = {
        "title": "int8 against fp32 audio embedding on the CPU",
        "tables": [{
            "caption": f"{args.model}, {len(clips)} speech-like clips of 2-8 s ({audio_s:.0f} s of audio), batches of {BATCH}, "
                       f"torch threads = {args.threads}, contenders interleaved batch by batch; cosine of each clip's "
                       "embedding to its fp32 embedding.",
            "columns": ["contender", "clips/s", "speed-up vs fp32", "cosine mean", "cosine min"],
            "rows": rows,
        }],
        "targets": targets,
        "notes": ["Load average (1, 5, 15 min) at the start and at the end: "
                  + "; ".join(" ".join(f"{x:.2f}" for x in entry) for entry in load)
                  + f" (on {os.cpu_count()} cores).",
                  f"--quantize int8 took {quantize_s:.1f} s to prepare (export and quantize the Whisper layers, export the CNN), "
                  "once per process.",
                  "--quantize int8: Whisper's encoder layers in ONNX Runtime dynamic int8 (their fc2 in fp32), the spectrogram "
                  "CNN in ONNX Runtime fp32, the text encoder in fp32 (search_clasp/quantization.py)."],
        "wall_s": time.perf_counter() - started,
    }
    write_result("bench_quantize", result)
    print_result(result)


if __name__ == "__main__":
    main()
