"""`clasp export`: a trained CLASP folder → a Hub-ready folder with a model card.

The folder is what `save_pretrained` writes (config with auto_map, safetensors, the flat remote
code, processor and tokenizer files) plus README.md, a model card made with huggingface_hub's
ModelCard / ModelCardData. With `--widget`, the card's widget shows example clips (copied into
samples/) with candidate labels and the scores this model gives them, computed here. Each
`--eval-results [NAME=]REPORT.json` (repeatable: the synthetic test split, real speech...) adds its
hard-protocol rows to the card's model-index as dataset NAME and its tables to the card. It is built in a temporary folder and renamed into place, so an
interrupted export never leaves a half-written model behind. The model folder's hubness bank
(hubness_bank.safetensors, see evaluation/hubness.py), if it has one, is copied beside the model. With `--push-to-hub REPO` the folder,
and only it, is then uploaded to the Hub in one commit.
"""

import json
import os
import shutil
import tempfile

CARD_TEMPLATE = """---
{card_data}
---

# CLASP: {model_name}

CLASP (Contrastive Language-Speech Pretraining, [arXiv 2412.13071](https://arxiv.org/abs/2412.13071))
embeds **speech** next to the multilingual sentence embedding of **what was said**, so a spoken
archive can be searched with text in any language the sentence encoder knows, without transcribing it.

| part | this model |
|---|---|
| speech encoder | {speech} ({speech_training}; {speech_pooling}) |
| spectrogram CNN | {spectrogram} (on the log-mel spectrogram) |
| text encoder (frozen) | {text} ({text_pooling} pooling, prefix `{text_prefix}`) |
| fusion | {fusion}, output {projection_dim}-d |
| training objective | {loss} |

## Usage

```python
import torch
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{repo}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)

inputs = processor(
    text=["a sentence in any language", "une autre phrase"],
    audio=[waveform],          # numpy / torch, any sampling rate, mono or multichannel
    sampling_rate=sampling_rate,
)
with torch.no_grad():
    out = model(**inputs)
out.logits_per_audio         # [n_audio, n_text] scaled cosine similarities
out.audio_embeds             # L2-normalised speech embeddings, searchable with out.text_embeds
```

Zero-shot classification with the pipeline (texts are embedded as given: add the sentence
encoder's prompt yourself, here `{text_prefix}`):

```python
from transformers import pipeline
classifier = pipeline("zero-shot-audio-classification", model="{repo}", trust_remote_code=True)
classifier(waveform_16khz, candidate_labels=["weather report", "football"], hypothesis_template="{text_prefix}{{}}")
```

`trust_remote_code=True` runs the four Python files in this repository (`configuration_clasp.py`,
`modeling_clasp.py`, `feature_extraction_clasp.py`, `processing_clasp.py`); they import only torch,
torchaudio, numpy and transformers. Weights are safetensors: no pickle is loaded.

## Evaluation

{evaluation}

## Limitations

{limitations}
"""

DEFAULT_LIMITATIONS = (
    "Trained on the data named above; retrieval quality on other voices, accents, noise and domains "
    "is not measured here. The text side is the frozen sentence encoder: languages it does not cover "
    "cannot be queried."
)


SPEECH_POOLING = {"mean": "mean-pooled over real frames", "attention": "attention-pooled over real frames"}


def widget_examples(model, processor, path, repo, samples_dir, revision="main") -> list[dict]:
    """The card's widget entries for the clips of a JSONL file of {"audio", "candidate_labels",
    "example_title"}: each clip is copied into `samples_dir` and scored by this model as the
    zero-shot-audio-classification pipeline scores it with the card's hypothesis_template (softmax
    over the labels, the sentence encoder's prompt once before each label)."""
    import torch

    from data_clasp.audio import load_audio

    os.makedirs(samples_dir, exist_ok=True)
    entries = []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for number, row in enumerate(rows, 1):
        audio = row["audio"] if os.path.isabs(row["audio"]) else os.path.join(os.path.dirname(os.path.abspath(path)), row["audio"])
        labels = list(row["candidate_labels"])
        samples, rate = load_audio(audio)
        inputs = processor(text=labels, audio=[samples], sampling_rate=rate)  # the processor adds the prompt
        with torch.no_grad():
            scores = model(**inputs).logits_per_audio[0].softmax(dim=-1).tolist()
        name = f"{number:02d}-{os.path.basename(audio)}"
        shutil.copyfile(audio, os.path.join(samples_dir, name))
        entries.append({
            "src": f"https://huggingface.co/{repo}/resolve/{revision}/samples/{name}",
            "example_title": row.get("example_title") or f"example {number}",
            "candidate_labels": ", ".join(labels),
            "output": [{"label": label, "score": round(score, 4)}
                       for label, score in sorted(zip(labels, scores), key=lambda pair: -pair[1])],
        })
    return entries


def build_model_card(model, processor, repo, languages, license, datasets, eval_results=None,
                     limitations=DEFAULT_LIMITATIONS, widget=None):
    """The card of `model`; `eval_results`: [(dataset name, `clasp eval` report)], each in model-index."""
    from huggingface_hub import ModelCard, ModelCardData

    config = model.config
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="zero-shot-audio-classification",
        language=languages or None,
        license=license,
        datasets=datasets or None,
        tags=["clasp", "speech", "audio-retrieval", "multilingual", "custom_code"],
        model_name=repo,
        **({"widget": widget} if widget else {}),
    )
    evaluation = "Not evaluated yet."
    if eval_results is not None:
        from evaluation.report import model_index_results, report_to_markdown

        card_data.eval_results = [result for name, report in eval_results  # a report of an earlier version: test
                                  for result in model_index_results(report, dataset_name=name,
                                                                    dataset_split=report.get("split", "test"))]
        sections = [report_to_markdown(report, title="Retrieval").replace("# Retrieval", "", 1).strip()
                    for _, report in eval_results]
        evaluation = (sections[0] if len(sections) == 1 else
                      "\n\n".join(f"### {name}\n\n{section}" for (name, _), section in zip(eval_results, sections)))
    return ModelCard(
        CARD_TEMPLATE.format(
            card_data=card_data.to_yaml(),
            model_name=repo,
            repo=repo,
            speech=config.speech_config.model_type,
            speech_training=("fine-tuned" if not config.freeze_speech_encoder else
                             f"frozen but its last {config.speech_trainable_layers} of {config.speech_config.num_hidden_layers}"
                             " layers, trained with the head" if config.speech_trainable_layers else "frozen"),
            speech_pooling=SPEECH_POOLING[config.speech_pooling],
            spectrogram=config.spectrogram_config.model_type,
            text=config.text_config.model_type,
            text_pooling=config.text_pooling,
            text_prefix=processor.text_prefix,
            fusion=config.fusion,
            projection_dim=config.projection_dim,
            loss=config.loss,
            evaluation=evaluation,
            limitations=limitations,
        )
    )


def export(model_dir, output_dir, repo=None, languages=(), license="mit", datasets=(), eval_results_path=None,
           dataset_name=None, widget_path=None, revision=None):
    from evaluation.hubness import BANK_FILE
    from modeling_clasp import ClaspModel
    from processing_clasp import ClaspProcessor

    reports = named_reports(eval_results_path, dataset_name)  # a bad report is named before anything loads
    model = ClaspModel.from_pretrained(model_dir).eval()
    processor = ClaspProcessor.from_pretrained(model_dir)
    eval_results = [(name, report) for name, _, report in reports] or None
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        repo = repo or os.path.basename(output_dir)
        widget = (widget_examples(model, processor, widget_path, repo, os.path.join(staging, "samples"), revision or "main")
                  if widget_path else None)
        card = build_model_card(model, processor, repo, list(languages), license, list(datasets), eval_results,
                                widget=widget)
        card.save(os.path.join(staging, "README.md"))
        for number, (_, path, _) in enumerate(reports):  # eval_results.json, eval_results_2.json, ...
            shutil.copyfile(path, os.path.join(staging, "eval_results.json" if number == 0 else f"eval_results_{number + 1}.json"))
        if os.path.isfile(os.path.join(model_dir, BANK_FILE)):  # an optional extra file: loading ignores it
            shutil.copyfile(os.path.join(model_dir, BANK_FILE), os.path.join(staging, BANK_FILE))
        if os.path.exists(output_dir):
            previous = output_dir + ".previous"
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(output_dir, previous)
            os.replace(staging, output_dir)
            shutil.rmtree(previous)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def named_reports(items, dataset_name=None) -> list:
    """[(dataset name, path, report)] of `--eval-results` items, each "PATH" or "NAME=PATH" (a path
    holding "=" is taken whole when it exists); an unnamed item is `dataset_name`, else "evaluation
    data", numbered when several are unnamed. Errors name the item: a missing file, a report that is
    not JSON or lacks its directions, a name given twice."""
    if items is None:
        return []
    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    reports, unnamed = [], 0
    for item in items:
        item = os.fspath(item)
        name, sep, path = item.partition("=")
        if not sep or os.path.exists(item):
            name, path = None, item
        elif not name.strip():
            raise ValueError(f"--eval-results {item}: give a name before '=' (NAME=PATH), or only the path")
        if name is None:
            unnamed += 1
            name = dataset_name or "evaluation data"
            if unnamed > 1:
                name = f"{name} ({unnamed})"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--eval-results {item}: no file {path} (a `clasp eval --output` JSON report)")
        try:
            with open(path, encoding="utf-8") as f:
                report = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"--eval-results {item}: {path} is not a JSON report ({error})") from None
        if not isinstance(report, dict) or not {"audio_to_text", "text_to_audio"} <= set(report):
            raise ValueError(f"--eval-results {item}: {path} is not a `clasp eval` report (no audio_to_text / text_to_audio)")
        if name in [n for n, _, _ in reports]:
            raise ValueError(f"--eval-results {item}: the name {name!r} is given twice; name each report NAME=PATH")
        reports.append((name, path, report))
    return reports


def push_to_hub(folder, repo, private=False, revision=None, commit_message="Upload CLASP model"):
    """Upload every file of an exported folder to the Hub model repo `repo` in one commit (with
    huggingface_hub's HfApi, as transformers' `push_to_hub` does), creating the repo (`private`) and
    the branch `revision` if they do not exist. Returns the commit's CommitInfo."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    repo = api.create_repo(repo, private=private, exist_ok=True).repo_id
    if revision is not None:
        api.create_branch(repo, branch=revision, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"),
                           path_or_fileobj=os.path.join(root, name))
        for root, _, names in os.walk(folder) for name in sorted(names)
    ]
    return api.create_commit(repo, operations, commit_message=commit_message, revision=revision)


def run(args) -> int:
    languages = [code for code in (args.language or "").split(",") if code]
    datasets = [name for name in (args.dataset or "").split(",") if name]
    if args.push_to_hub and args.repo and args.repo != args.push_to_hub:
        raise ValueError(f"--repo {args.repo} and --push-to-hub {args.push_to_hub} name different repos")
    if args.push_to_hub:  # a malformed id is refused before anything is written
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(args.push_to_hub)
        except HFValidationError as error:
            raise ValueError(f"--push-to-hub {args.push_to_hub}: {error}") from None
    if (args.private or args.revision) and not args.push_to_hub:
        raise ValueError("--private and --revision only apply with --push-to-hub REPO")
    path = export(args.model, args.output, repo=args.push_to_hub or args.repo, languages=languages, license=args.license,
                  datasets=datasets, eval_results_path=args.eval_results, dataset_name=args.dataset_name,
                  widget_path=args.widget, revision=args.revision)
    print(f"exported {args.model} → {path}")
    if args.push_to_hub:
        commit = push_to_hub(path, args.push_to_hub, private=args.private, revision=args.revision)
        print(f"pushed {path} → {getattr(commit, 'commit_url', None) or args.push_to_hub}")
    return 0


def register(subparsers):
    parser = subparsers.add_parser(
        "export", help="write a Hub-ready folder (weights, remote code, processor, model card)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", required=True, help="a saved CLASP folder (model + processor)")
    parser.add_argument("--output", required=True, help="the Hub folder to write")
    parser.add_argument("--repo", help="Hub repo id shown in the card's usage snippet (default: --push-to-hub's, or the folder name)")
    parser.add_argument("--language", help="comma-separated ISO codes of the training speech, for the card")
    parser.add_argument("--license", default="mit")
    parser.add_argument("--dataset", help="comma-separated dataset names for the card")
    parser.add_argument("--eval-results", action="append", metavar="[NAME=]REPORT.json",
                        help="a `clasp eval` JSON report: its hard-protocol figures go into model-index as dataset NAME "
                             "(default --dataset-name) and its tables into the card; repeat for more evaluation sets, "
                             "e.g. --eval-results test.json --eval-results 'Asterisk real speech (test)=asterisk.json'")
    parser.add_argument("--dataset-name", help="name of the evaluated data of an unnamed --eval-results in model-index")
    parser.add_argument("--widget", metavar="FILE.jsonl",
                        help='widget examples, one JSON object a line: {"audio": path, "candidate_labels": [...], '
                             '"example_title": ...}; scored by the model, the clips copied into samples/')
    parser.add_argument("--push-to-hub", metavar="REPO",
                        help="then upload the folder to this Hub model repo (created if missing; needs `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    parser.add_argument("--revision", help="with --push-to-hub: the branch to push to (created if missing; default main)")
    parser.set_defaults(func=run)
