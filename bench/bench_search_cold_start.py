"""Cold start of `clasp search --query`: a fresh process, from `python` to the printed results.

    .venv/bin/python bench/bench_search_cold_start.py [--model artifacts/clasp-demo] [--rounds 3]

A text query loads only the sentence encoder (`ClaspSearch(text_only=True)`); the baseline is the
same query through `ClaspSearch` with the whole model (Whisper, EfficientNet and the head too), as
`clasp search` loaded it before. Both run as fresh processes, interleaved, best of `--rounds`; a
third child only imports the search code, to say how much of a cold start is Python imports.
Without --model (and without artifacts/clasp-demo) the model is random with the offline-base
shapes (Whisper-base encoder, EfficientNet-Lite0, a 12-layer 384-d BERT over e5's 250k
vocabulary): loading costs depend on the shapes, not on the values.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import REPO_ROOT, print_result, run_child, speech_like_clips, write_result  # noqa: E402

QUERY = "the weather will be sunny tomorrow"


def offline_base_shaped_model(folder: Path) -> Path:
    import torch
    from transformers import BertConfig, BertTokenizerFast, WhisperConfig

    from backbones_clasp.efficientnet_lite import lite0_config
    from configuration_clasp import ClaspConfig
    from modeling_clasp import ClaspModel
    from processing_clasp import ClaspFeatureExtractor, ClaspProcessor

    torch.manual_seed(0)
    whisper = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                            num_mel_bins=80, decoder_layers=1, max_source_positions=1500)
    text = BertConfig(vocab_size=250037, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512)
    config = ClaspConfig(speech_config=whisper.to_dict(), spectrogram_config=lite0_config().to_dict(),
                         text_config=text.to_dict(), text_pooling="mean")
    ClaspModel(config).save_pretrained(folder)
    words = "the weather will be sunny tomorrow a cat sat on mat".split()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    extractor = ClaspFeatureExtractor(speech_features="whisper_log_mel", feature_size=80, do_normalize=False,
                                      max_samples=30 * 16000)
    ClaspProcessor(extractor, BertTokenizerFast(vocab=vocab), text_prefix="query: ", text_max_length=512).save_pretrained(folder)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a CLASP folder (default: artifacts/clasp-demo if built, else offline-base shapes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--make-model", help=argparse.SUPPRESS)  # in a child: this process must stay small
    args = parser.parse_args()
    if args.make_model:
        offline_base_shaped_model(Path(args.make_model))
        return 0
    import soundfile

    started = time.perf_counter()
    demo = os.path.join(REPO_ROOT, "artifacts", "clasp-demo")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or (demo if os.path.isdir(demo) else str(tmp / "model"))
        if model == str(tmp / "model"):
            run_child([sys.executable, os.path.abspath(__file__), "--make-model", model])
        for i, clip in enumerate(speech_like_clips(4, 2.0, 4.0)):
            soundfile.write(tmp / f"clip{i}.wav", clip, 16000)
        # Children only: a child's peak RSS starts at its parent's size when forked, so this one loads no model.
        run_child([sys.executable, "-m", "clasp_cli.main", "index", "--model", model, "--output", str(tmp / "index"),
                   "--audio", *[str(tmp / f"clip{i}.wav") for i in range(4)]])
        children = {
            "clasp search --query (text tower only)": [sys.executable, "-m", "clasp_cli.main", "search", "--index",
                                                       str(tmp / "index"), "--query", QUERY, "-k", "3"],
            "whole model (before)": [sys.executable, "-c", "import sys; from search_clasp import ClaspSearch; "
                                     "ClaspSearch(sys.argv[1]).text(sys.argv[2], k=3)", str(tmp / "index"), QUERY],
            "imports only": [sys.executable, "-c", "import search_clasp.search"],
        }
        best = {name: (float("inf"), 0) for name in children}
        for _ in range(args.rounds):  # interleaved: a busy neighbour slows every contender alike
            for name, argv in children.items():
                started_child = time.perf_counter()
                _, peak = run_child(argv)
                best[name] = min(best[name], (time.perf_counter() - started_child, peak))
    text_s, whole_s = best["clasp search --query (text tower only)"][0], best["whole model (before)"][0]
    result = {
        "title": "Cold start of `clasp search --query` (a fresh process, text query, k = 3)",
        "wall_s": time.perf_counter() - started,
        "tables": [{"caption": f"Model: {'artifacts/clasp-demo' if model == demo else args.model or 'random, offline-base shapes'}; "
                               f"best of {args.rounds} interleaved runs.",
                    "columns": ["process", "wall s", "peak RSS MB"],
                    "rows": [[name, seconds, peak / 2**20] for name, (seconds, peak) in best.items()]}],
        "notes": [f"text tower only: {whole_s / text_s:.2f}x faster than loading the whole model, "
                  f"{whole_s - text_s:.1f} s saved a query; imports alone take {best['imports only'][0]:.1f} s"],
    }
    write_result("bench_search_cold_start", result)
    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
