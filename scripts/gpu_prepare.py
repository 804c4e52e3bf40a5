"""Prepare the folder that scripts/gpu_run.py needs on the GPU machine (which has no network).

The device accepts at most 64 MiB of upload, so only what encoding audio needs travels: the model
config, the speech-encoder + CNN + fusion-head weights in bf16, a feature-extractor config with a
stand-in tokenizer (the frozen text encoder is not sent), a few real clips, and their CPU fp32
embeddings computed with the same bf16-rounded weights as the reference.

    python scripts/gpu_prepare.py --model artifacts/demo-small/model --data artifacts/demo-small/data --output .gpu
"""

import argparse
import json
import os
import shutil
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a CLASP folder or a backbone preset")
    parser.add_argument("--data", required=True, help="a `clasp data` folder: its first test clips are sent")
    parser.add_argument("--output", default=".gpu")
    parser.add_argument("--clips", type=int, default=16)
    args = parser.parse_args()

    import soundfile
    from datasets import load_from_disk
    from safetensors.torch import save_file
    from transformers import BertTokenizerFast

    from backbones_clasp.checkpoints import load_model_and_processor
    from processing_clasp import ClaspProcessor

    shutil.rmtree(args.output, ignore_errors=True)
    os.makedirs(os.path.join(args.output, "clips"))
    model, processor = load_model_and_processor(args.model)  # a trained folder, or a preset (untrained head)
    model.eval()
    audio_parts = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if not k.startswith("text_model.")}
    save_file(audio_parts, os.path.join(args.output, "audio_parts.safetensors"))
    model.config.save_pretrained(args.output)
    stand_in = BertTokenizerFast(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4})
    ClaspProcessor(processor.feature_extractor, stand_in, text_prefix=processor.text_prefix).save_pretrained(args.output)

    test = load_from_disk(os.path.join(args.data, "dataset"))["test"].select(range(args.clips))
    names, clips = [], []
    for i, row in enumerate(test):
        names.append(f"clip{i:02d}.wav")
        clips.append(row["audio"]["array"])
        soundfile.write(os.path.join(args.output, "clips", names[-1]), clips[-1], row["audio"]["sampling_rate"])
    with open(os.path.join(args.output, "clips.json"), "w") as f:
        json.dump(names, f)

    # The reference: CPU fp32 with the weights rounded exactly as the GPU will load them.
    model.load_state_dict({k: v.float() for k, v in audio_parts.items()}, strict=False)
    clips = [soundfile.read(os.path.join(args.output, "clips", n), dtype="float32")[0] for n in names]
    with torch.no_grad():
        audio = model.get_audio_features(**processor(audio=clips, sampling_rate=16000)).pooler_output
    save_file({"audio_embeds": audio.contiguous()}, os.path.join(args.output, "reference.safetensors"))
    size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(args.output) for f in files)
    print(f"prepared {args.output}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
