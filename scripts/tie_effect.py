"""How much the tie rule moves the ASR baseline of a demo run: ties to the gold (the rule before), expected, pessimistic.

    .venv/bin/python scripts/tie_effect.py [artifacts/demo-small]   (writes WORK/asr_ties_effect.json)

The ASR baseline's transcripts come from the demo's report; the same text encoder embeds them.
Identical transcripts of different sentences tie for real; CLASP's continuous embeddings do not.
"""

import json
import numpy as np
import torch
from backbones_clasp.checkpoints import load_model_and_processor
from evaluation.embed import embed_texts
from evaluation.pairs import dataset_pairs, usable_clips
from evaluation.protocols import correct_sets, rank_queries
from evaluation.retrieval_metrics.rank_metrics import metrics_from_ranks

import sys

work = sys.argv[1] if len(sys.argv) > 1 else "artifacts/demo-small"
report = json.load(open(f"{work}/eval_results.json"))
model, processor = load_model_and_processor(f"{work}/model")
model.eval()
pairs = dataset_pairs(f"{work}/data", "test")
_, _, kept = usable_clips(pairs, processor.feature_extractor)
pairs = [pairs[i] for i in kept]
with torch.no_grad():
    texts = embed_texts(model, processor, [p["text"] for p in pairs], 32)
    transcripts = embed_texts(model, processor, report["asr_baseline"]["transcripts"], 32)
gold = np.arange(len(pairs))
out = {}
for rule, sets in {"same-group": correct_sets(len(pairs), [p["group"] for p in pairs], [p["text"] for p in pairs]),
                   "same-text": correct_sets(len(pairs), None, [p["text"] for p in pairs])}.items():
    for direction, (q, c) in {"audio_to_text": (transcripts, texts), "text_to_audio": (texts, transcripts)}.items():
        hard, _ = rank_queries(q, c, gold, sets)
        optimistic = hard.copy()
        optimistic["tied"] = 0
        optimistic["correct_tied"] = 1
        row = {"queries_with_ties": int((hard["tied"] > 0).sum()),
               "ties_to_gold": metrics_from_ranks(optimistic), "expected": metrics_from_ranks(hard),
               "pessimistic": metrics_from_ranks(hard, "pessimistic")}
        out[f"{rule} {direction}"] = row
        print(rule, direction, row["queries_with_ties"], "ties;",
              *(f"{k}: H@1 {row[k]['hits@1']:.3f} MRR {row[k]['mrr']:.3f} meanR {row[k]['mean_rank']:.1f};"
                for k in ("ties_to_gold", "expected", "pessimistic")))
with open(f"{work}/asr_ties_effect.json", "w") as f:
    json.dump(out, f, indent=1)
