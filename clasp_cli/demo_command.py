"""`clasp demo` (what `make demo` runs): the whole product, end to end, on the embedded default.

    backbones → synthetic multilingual speech → cached features → accelerate training →
    evaluation against the Whisper-ASR baseline → Hub export with a model card → plots →
    real read speech (LibriVox; Debian's Asterisk prompts in 5 languages) → search: English speech
    indexed, queried with French text → summary

Every stage is one of our ordinary commands, printed before it runs, and each one resumes: a
stage whose output is complete is skipped, an interrupted one continues where it stopped. So a
second `make demo` costs seconds, and `make demo DEMO_SIZE=large` can be stopped and restarted
over hours. Everything lands in artifacts/ (git-ignored); the Hub-ready model in
artifacts/clasp-demo/.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from data_clasp.files import write_atomically

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGUAGES = "en,es,de,ru,it,cs,pt,fr"
SIZES = {
    # ~45 minutes on a 2-core CPU: the Whisper-base encoder (~0.15 s a clip, batched) and the ASR
    # baseline (~1 s a clip, greedy) dominate. 8 x 640 x 2 clips leave >= 1,000 in the test split.
    # Mean pooling: attention pooling was behind it on the validation split (README, ablations).
    "small": {"per_language": 640, "takes": 2, "epochs": 60, "batch": 256, "patience": 15, "learning_rate": 1e-3,
              "speech_pooling": "mean", "soft_k": 100, "asterisk_per_language": 80},
    # Hours on a CPU; every stage resumes, so it can be stopped and restarted.
    "large": {"per_language": 1200, "takes": 2, "epochs": 100, "batch": 256, "patience": 15, "learning_rate": 1e-3,
              "speech_pooling": "mean", "soft_k": 100, "asterisk_per_language": 1000},
    # A minute: the CI-sized end-to-end check of the pipeline itself (a test runs it); its test
    # split has a handful of clips, so the soft protocol draws 1 wrong candidate.
    # Attention pooling here, so the test runs that path end to end (frames cached, trained, exported).
    "tiny": {"per_language": 15, "takes": 1, "epochs": 3, "batch": 8, "patience": 3, "learning_rate": 1e-3,
             "speech_pooling": "attention", "soft_k": 2, "asterisk_per_language": 3},
}


def stage(title, command, done_file=None, env=None):
    """Run one stage's command unless `done_file` shows it finished; echo the command."""
    if done_file and os.path.exists(done_file):
        print(f"[demo] {title}: done already ({os.path.relpath(done_file, REPO)})", flush=True)
        return
    print(f"\n[demo] {title}\n$ {' '.join(shlex.quote(c) for c in command)}", flush=True)
    started = time.perf_counter()
    code = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}).returncode
    if code != 0:
        raise SystemExit(f"[demo] {title} failed (exit {code}); fix the cause above and rerun: finished stages are kept")
    print(f"[demo] {title}: {time.perf_counter() - started:.0f} s", flush=True)


def clasp(*args):
    return [sys.executable, "-m", "clasp_cli.main", *args]


def librivox_manifest(path, root="/usr/share/pocketsphinx/test/data/librivox") -> bool:
    """Debian's pocketsphinx-testdata LibriVox read-speech clips with their transcripts, as a manifest."""
    transcription = os.path.join(root, "transcription")
    if not os.path.exists(transcription):
        return False
    rows = []
    with open(transcription, encoding="utf-8") as f:
        for line in f:  # "<s> words </s> (file id)"
            words, _, file_id = line.strip().rpartition("(")
            text = words.replace("<s>", "").replace("</s>", "").strip()
            rows.append({"audio": os.path.join(root, file_id.rstrip(")") + ".wav"), "text": text,
                         "language": "en", "source": "librivox"})
    write_atomically(path, "".join(json.dumps(row) + "\n" for row in rows))
    return bool(rows)


def make_plots(model_dir, features_dir, output_dir, sample=24, seed=0):
    """A text×audio similarity heatmap of a test sample and a 2-D PCA map of test embeddings by language."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from datasets import load_from_disk

    from data_clasp.features import CachedFeatures
    from modeling_clasp import ClaspModel

    test = load_from_disk(features_dir)["test"]
    model = ClaspModel.from_pretrained(model_dir).eval()
    cached = CachedFeatures(test, frames=model.config.speech_needs_frames)
    with torch.no_grad():
        out = model(**cached.collate([cached[i] for i in range(len(cached))]))
    audio, text = out.audio_embeds, out.text_embeds
    languages = np.array(test["language"])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(test), size=min(sample, len(test)), replace=False))
    similarity = (text[rows] @ audio[rows].T).numpy()
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(similarity, cmap="viridis")
    labels = [f"{languages[i]}: {test[int(i)]['text'][:28]}" for i in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=6)
    ax.set_xticks(range(len(rows)), [languages[i] for i in rows], fontsize=6, rotation=90)
    ax.set_xlabel("audio (language of the speech)"), ax.set_ylabel("text")
    ax.set_title("cosine similarity, held-out test sample (diagonal = matching pairs)")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "similarity_heatmap.png"), dpi=110)
    plt.close(fig)

    both = torch.cat([audio, text]).numpy()
    centred = both - both.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    for language in sorted(set(languages)):
        mask = np.concatenate([languages == language, np.zeros(len(text), bool)])
        ax.scatter(points[mask, 0], points[mask, 1], s=6, label=language, alpha=0.7)
    ax.scatter(points[len(audio):, 0], points[len(audio):, 1], s=4, c="k", marker="x", alpha=0.25, label="text")
    ax.legend(markerscale=2, fontsize=7, ncol=2)
    ax.set_title("test embeddings (PCA): audio coloured by language, text in black")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "embedding_map.png"), dpi=110)
    plt.close(fig)


def asterisk_available() -> bool:
    """Whether Debian's asterisk-core-sounds packages (and their -g722 recordings) are installed."""
    from data_clasp.asterisk import LANGUAGES, find_voices

    try:
        for language in LANGUAGES:
            find_voices(language)
    except FileNotFoundError as missing:
        print(f"[demo] real-speech stage left out: {missing}", flush=True)
        return False
    return True


def csls_name(name, report) -> str:
    """A row name for CLASP ranked with the hubness correction (`clasp eval --also-csls`: report["csls"])."""
    return f"{name} + CSLS (k={report['hubness']['k']})" if report else name


def summary_table(eval_results, librivox=None, asterisk=None) -> str:
    lines = ["", "| system | direction | HITS@1 | MRR | meanR |", "|---|---|---|---|---|"]
    csls = eval_results.get("csls")
    for name, report in (("CLASP", eval_results), (csls_name("CLASP", csls), csls),
                         ("Whisper-ASR → same text encoder", eval_results.get("asr_baseline"))):
        for direction in ("audio_to_text", "text_to_audio"):
            if report and direction in report:
                m = report[direction]
                lines.append(f"| {name} | {direction} | {m['hits@1']:.3f} | {m['mrr']:.3f} | {m['mean_rank']:.1f} |")
    for code, entry in eval_results.get("cross_lingual", {}).items():
        m = entry["text_to_audio"]
        lines.append(f"| CLASP, {code} text queries | text_to_audio | {m['hits@1']:.3f} | {m['mrr']:.3f} | {m['mean_rank']:.1f} |")
    if librivox:
        for name, report in (("CLASP (LibriVox, zero-shot)", librivox), ("ASR (LibriVox)", librivox.get("asr_baseline"))):
            if report:
                m = report["text_to_audio"]
                lines.append(f"| {name} | text_to_audio | {m['hits@1']:.3f} | {m['mrr']:.3f} | {m['mean_rank']:.1f} |")
    # Real speech: each language's clips searched among that language's clips (monolingual), both systems.
    asterisk_csls = (asterisk or {}).get("csls")
    for name, report in (("CLASP (Asterisk, real speech)", asterisk),
                         (csls_name("CLASP (Asterisk, real speech)", asterisk_csls), asterisk_csls),
                         ("ASR (Asterisk, real speech)", (asterisk or {}).get("asr_baseline"))):
        for code, entry in sorted((report or {}).get("monolingual", {}).items()):
            m = entry["text_to_audio"]
            lines.append(f"| {name}, {code} | text_to_audio | {m['hits@1']:.3f} | {m['mrr']:.3f} | {m['mean_rank']:.1f} |")
    return "\n".join(lines)


def check_work_dir(work, config, trained_outputs) -> None:
    """A stage counts as done when its output exists, so a work folder must only ever hold one
    configuration's outputs: record it on the first run, refuse another one later. The data
    (speech and features: most of the time) and the training are recorded apart: once the outputs
    of an earlier training (`trained_outputs`) are deleted, another training setting may reuse the data."""
    path = os.path.join(work, "demo_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
        if recorded.get("data") != config["data"]:
            raise ValueError(f"{work} holds a demo run of another configuration (data {recorded.get('data')}, now "
                             f"{config['data']}): delete it, or pass --work-dir")
        stale = [p for p in trained_outputs if os.path.exists(p)]
        if recorded == config:
            return
        if stale:
            raise ValueError(f"{work} holds a demo run of another configuration (training {recorded.get('training')}, "
                             f"now {config['training']}): delete {', '.join(stale)} (the speech and features can "
                             "stay), or pass --work-dir")
    write_atomically(path, json.dumps(config))


def test_rows(data):
    """The test split's rows of the synthesised manifest, audio paths made absolute."""
    with open(os.path.join(data, "manifest.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{**row, "audio": os.path.join(data, row["audio"])} for row in rows if row["split"] == "test"]


def write_widget_examples(rows, path, count=3, distractors=2):
    """The card's widget: test clips in `count` languages, each with its sentence in another language
    (French, or English for French speech) among `distractors` other test sentences in that language."""
    examples, languages = [], []
    for row in rows:
        target = "en" if row["language"] == "fr" else "fr"
        if row["language"] in languages or target not in row["translations"]:
            continue
        answer = row["translations"][target]
        # Distinct wrong labels (two sentence groups can share a translation: "Django administration").
        others = list(dict.fromkeys(r["translations"][target] for r in rows
                                    if r["group"] != row["group"] and r["translations"].get(target, answer) != answer))
        labels = [answer, *others[len(examples) * distractors:(len(examples) + 1) * distractors]]
        examples.append({"audio": row["audio"], "candidate_labels": sorted(labels),
                         "example_title": f"{row['language']} speech, {target} labels"})
        languages.append(row["language"])
        if len(examples) == count:
            break
    write_atomically(path, "".join(json.dumps(example, ensure_ascii=False) + "\n" for example in examples))


def search_english_with_french(index_dir, rows, result_file, k=10):
    """#8's check: the English test speech indexed, searched with the French translations of its
    sentences. A hit is right when it is a reading of that sentence (any take of its group)."""
    import numpy as np

    from search_clasp import ClaspSearch

    search = ClaspSearch(index_dir, device="cpu")
    group_of = {os.path.abspath(row["audio"]): row["group"] for row in rows if row["language"] == "en"}
    queries = {row["group"]: row["translations"]["fr"] for row in rows if row["language"] == "en" and "fr" in row["translations"]}
    ranks, latency = [], []
    for group, query in queries.items():
        hits = search.text(query, k=k)
        latency.append(search.last_timing["embed_s"] + search.last_timing["search_s"])
        ranks.append(next((hit["rank"] for hit in hits if group_of.get(os.path.abspath(hit["path"])) == group), k + 1))
    ranks = np.array(ranks, dtype=float)
    result = {"indexed_clips": len(search.index), "queries": len(ranks), "query_language": "fr", "speech_language": "en"}
    if len(ranks):
        result.update({"top1": float((ranks == 1).mean()), f"hits@{k}": float((ranks <= k).mean()),
                       f"mrr@{k}": float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean()),
                       "median_query_ms": 1000 * float(np.median(latency))})
    write_atomically(result_file, json.dumps(result, indent=2))
    return result


def run(args) -> int:
    from evaluation.hubness import BANK_FILE

    size = SIZES[args.size]
    languages = args.languages or LANGUAGES
    work = os.path.abspath(args.work_dir or os.path.join(REPO, "artifacts", f"demo-{args.size}"))
    default_output = "clasp-demo" if args.size == "small" else f"clasp-demo-{args.size}"
    output = os.path.abspath(args.output or os.path.join(REPO, "artifacts", default_output))
    data, features, model = (os.path.join(work, name) for name in ("data", "features", "model"))
    eval_file, asr_cache = os.path.join(work, "eval_results.json"), os.path.join(work, "asr_transcripts.jsonl")
    librivox_file, search_file = os.path.join(work, "librivox_eval.json"), os.path.join(work, "search_en_fr.json")
    search_index = os.path.join(work, "search-en.index")
    asterisk, asterisk_file = os.path.join(work, "asterisk"), os.path.join(work, "asterisk_eval.json")
    os.makedirs(work, exist_ok=True)
    training = {k: size[k] for k in ("epochs", "batch", "patience", "learning_rate", "speech_pooling", "soft_k")}
    check_work_dir(work, {"data": {"per_language": size["per_language"], "takes": size["takes"], "languages": languages},
                          "training": {**training, "fusion": args.fusion}},
                   trained_outputs=[model, eval_file, librivox_file, asterisk_file, search_index, search_file])
    started = time.perf_counter()

    stage("1/9 offline backbones (Whisper-base, EfficientNet-Lite0, multilingual-e5-small)", clasp("backbones", "build"))
    stage("2/9 synthetic multilingual speech (espeak-ng)",
          clasp("data", "synth", "--languages", languages, "--per-language", str(size["per_language"]),
                "--takes", str(size["takes"]), "--seed", "0", "--output", data),
          done_file=os.path.join(data, "dataset", "dataset_dict.json"))
    stage("3/9 frozen-backbone features", clasp("features", "--model", "offline-base", "--data", data, "--output", features),
          done_file=os.path.join(features, "clasp_features.json"))
    stage("4/9 training the fusion head (accelerate)",
          [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "train_accelerate.py",
           "--train_data", features, "--model", "offline-base", "--output_dir", model, "--fusion", args.fusion,
           "--speech_pooling", size["speech_pooling"], "--per_device_train_batch_size", str(size["batch"]),
           "--learning_rate", str(size["learning_rate"]), "--num_train_epochs", str(size["epochs"]),
           "--early_stopping_patience", str(size["patience"]), "--checkpointing_steps", "1000", "--with_tracking",
           "--resume_from_checkpoint", "latest", "--seed", "0"],
          done_file=os.path.join(model, "training_summary.json"))
    # CLASP with and without the hubness correction from one encoding, when training left a bank
    # (a model trained before the trainer wrote one has none).
    also_csls = ["--also-csls"] if os.path.exists(os.path.join(model, BANK_FILE)) else []
    stage("5/9 held-out test split: CLASP (with and without CSLS) vs Whisper-ASR baseline",
          clasp("eval", "--model", model, "--data", data, "--split", "test", "--asr-baseline", "--asr-cache", asr_cache,
                "--soft-k", str(size["soft_k"]), "--output", eval_file, "--markdown", os.path.join(work, "eval_results.md"),
                *also_csls),
          done_file=eval_file)
    manifest = os.path.join(work, "librivox.jsonl")
    if librivox_manifest(manifest):
        stage("6/9 zero-shot on real read speech (LibriVox clips of pocketsphinx-testdata)",
              clasp("eval", "--model", model, "--manifest", manifest, "--asr-baseline", "--asr-cache", asr_cache,
                    "--soft-k", "5", "--output", librivox_file), done_file=librivox_file)
    if asterisk_available():
        stage("7/9 real read speech: Asterisk prompts in en es fr it ru (Debian's asterisk-core-sounds)",
              clasp("data", "import", "--asterisk", "--per-language", str(size["asterisk_per_language"]),
                    "--output", asterisk), done_file=os.path.join(asterisk, "dataset", "dataset_dict.json"))
        stage("7/9 real read speech: CLASP vs Whisper-ASR on the Asterisk test half (never trained on)",
              clasp("eval", "--model", model, "--data", asterisk, "--split", "test", "--asr-baseline",
                    "--asr-cache", asr_cache, "--output", asterisk_file,
                    "--markdown", os.path.join(work, "asterisk_eval.md"), *also_csls), done_file=asterisk_file)
    # The card's model-index holds the real-speech rows beside the synthetic test split's.
    real_speech = (["--eval-results", f"Asterisk real speech, en es fr it ru (test)={asterisk_file}"]
                   if os.path.exists(asterisk_file) else [])
    rows = test_rows(data)
    widget = os.path.join(work, "widget.jsonl")
    write_widget_examples(rows, widget)
    stage("8/9 Hub export with model card",
          clasp("export", "--model", model, "--output", output, "--eval-results", eval_file, *real_speech, "--language", languages,
                "--dataset", "synthetic-espeak-ng-multilingual-speech", "--dataset-name", "espeak-ng multilingual (held-out test)",
                "--repo", "clasp-offline-base", "--widget", widget))
    make_plots(model, features, output)
    for name in ("training_curves.png", "training_summary.json"):
        if os.path.exists(os.path.join(model, name)):
            subprocess.run(["cp", os.path.join(model, name), output], check=True)
    english = os.path.join(work, "search-en.jsonl")
    write_atomically(english, "".join(json.dumps({"audio": r["audio"], "text": r["text"], "language": "en"},
                                                 ensure_ascii=False) + "\n" for r in rows if r["language"] == "en"))
    search = None
    if os.path.getsize(english):
        stage("9/9 search: the English test speech indexed, searched with French sentences",
              clasp("index", "--model", output, "--audio", english, "--output", search_index),
              done_file=os.path.join(search_index, "index.faiss"))
        if os.path.exists(search_file):
            with open(search_file, encoding="utf-8") as f:
                search = json.load(f)
        else:
            search = search_english_with_french(search_index, rows, search_file)
    for name in ("librivox_eval.json", "asterisk_eval.json", "asterisk_eval.md", "eval_results.md", "search_en_fr.json"):
        if os.path.exists(os.path.join(work, name)):
            subprocess.run(["cp", os.path.join(work, name), output], check=True)

    with open(eval_file) as f:
        eval_results = json.load(f)
    librivox = asterisk_results = None
    if os.path.exists(librivox_file):
        with open(librivox_file, encoding="utf-8") as f:
            librivox = json.load(f)
    if os.path.exists(asterisk_file):
        with open(asterisk_file, encoding="utf-8") as f:
            asterisk_results = json.load(f)
    print(f"\n[demo] CLASP offline-base, {eval_results['num_queries']} held-out test clips, hard protocol")
    print(summary_table(eval_results, librivox, asterisk_results))
    if search and search["queries"]:
        print(f"\n[demo] search: {search['indexed_clips']} English test clips indexed, {search['queries']} French "
              f"queries: right file first for {search['top1']:.0%}, in the top 10 for {search['hits@10']:.0%} "
              f"(median {search['median_query_ms']:.0f} ms a query)")
    print(f"\n[demo] done in {time.perf_counter() - started:.0f} s; Hub-ready model in {os.path.relpath(output, REPO)}")
    return 0


def register(subparsers):
    parser = subparsers.add_parser("demo", help="the main job: train, evaluate and export CLASP on the embedded default",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--languages", help=f"comma-separated (default {LANGUAGES})")
    parser.add_argument("--fusion", choices=["concat", "gating", "speech_only", "spectrogram_only"], default="concat")
    parser.add_argument("--work-dir", help="intermediate files (default artifacts/demo-SIZE)")
    parser.add_argument("--output", help="the Hub-ready model folder (default artifacts/clasp-demo)")
    parser.set_defaults(func=run)
