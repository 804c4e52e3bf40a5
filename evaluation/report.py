"""Reading a retrieval report (the dict of `evaluation.protocols.retrieval_report`): a table
for the terminal, a markdown page, and model-index entries for a model card."""

from evaluation.protocols import DIRECTIONS

COLUMNS = {  # metric key -> column heading, in the paper's order first
    "hits@1": "HITS@1",
    "mrr": "MRR",
    "mean_rank": "meanR",
    "median_rank": "medR",
    "recall@5": "R@5",
    "recall@10": "R@10",
}
ARROWS = {"audio_to_text": "audio → text", "text_to_audio": "text → audio"}
TIE_RULES = {"expected": "the mean over every order of the tied candidates (McSherry & Najork, ECIR 2008)",
             "pessimistic": "every tied wrong candidate ranks first"}
CORRECT_SET_RULES = {"same-group": "any reading of the query's sentence group, in any language, or an identical text",
                     "same-text": "identical texts only"}


def protocol_notes(report: dict) -> list[str]:
    """How to read the numbers: the tie rule, the correct set, and a soft pool smaller than asked.
    ValueError for a report made before these rules were recorded (its ties favoured the gold)."""
    if "ties" not in report or "correct_set" not in report:
        raise ValueError("this report predates the recorded tie and correct-set rules (its ties favoured the "
                         "correct answer); evaluate again with `clasp eval`")
    soft = report["soft"]
    notes = [f"ties: {report['ties']}, {TIE_RULES[report['ties']]}",
             f"correct set: {report['correct_set']}, {CORRECT_SET_RULES[report['correct_set']]}"]
    hubness = report.get("hubness", {"method": "none"})  # reports from before the option ranked by cosine
    if hubness["method"] == "csls":
        notes.append(f"hubness: csls k={hubness['k']}, scores 2 cos(q, c) - r(c), r(c) the mean cosine of candidate c "
                     f"to its {hubness['k']} nearest of {hubness['bank_rows']} training embeddings of the query modality "
                     "(Conneau et al., ICLR 2018)")
    if soft["k"] is None:
        notes.append(f"soft protocol {soft['note']}")
    elif soft["k"] != soft["k_requested"]:
        notes.append(f"soft protocol with k={soft['k']}, the largest pool every query can fill "
                     f"(k={soft['k_requested']} was asked for)")
    return notes


def report_rows(report: dict):
    """(protocol, direction, queries, metrics) for every line of the report, in reading order."""
    for direction in DIRECTIONS:
        yield "hard", ARROWS[direction], "all", report[direction]
    if report["soft"]["k"] is not None:
        for direction in DIRECTIONS:
            yield f"soft k={report['soft']['k']}", ARROWS[direction], "all", report["soft"][direction]
    for key in report:
        if key.startswith("by_"):
            for label, by_direction in report[key].items():
                for direction in DIRECTIONS:
                    yield "hard", ARROWS[direction], f"{key[3:]}={label}", by_direction[direction]
    for language, by_direction in report["monolingual"].items():
        for direction in DIRECTIONS:
            yield "monolingual", ARROWS[direction], f"language={language}", by_direction[direction]
    for language, by_direction in report["cross_lingual"].items():
        yield "hard", f"text ({language}) → audio", "translated", by_direction["text_to_audio"]
    for direction in DIRECTIONS:
        if direction in report.get("asr_baseline", {}):
            yield "ASR baseline", ARROWS[direction], "all", report["asr_baseline"][direction]


def _cells(protocol, direction, queries, metrics):
    values = [f"{metrics[key]:.1f}" if key.endswith("_rank") else f"{metrics[key]:.3f}" for key in COLUMNS]
    return [protocol, direction, queries, *values]


def format_report(report: dict) -> str:
    """Fixed-width table for the terminal, then how to read it."""
    notes = protocol_notes(report)
    lines = [["protocol", "direction", "queries", *COLUMNS.values()]]
    lines += [_cells(*row) for row in report_rows(report)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    # Text columns flush left, numbers flush right.
    text = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    timing = report["timing"]
    text += notes
    text.append(f"{report['num_queries']} pairs; embed {timing['embed_s']:.1f} s, "
                f"score and rank {timing['score_and_rank_s']:.1f} s")
    return "\n".join(text)


def report_to_markdown(report: dict, title: str = "Retrieval evaluation") -> str:
    """Markdown page: the table plus how to read it."""
    notes = protocol_notes(report)
    header = ["protocol", "direction", "queries", *COLUMNS.values()]
    soft = "" if report["soft"]["k"] is None else (
        f"soft: against its gold plus {report['soft']['k'] - 1} random wrong candidates; ")
    lines = [
        f"# {title}",
        "",
        f"{report['num_queries']} audio-text pairs. hard: every query against all pairs; {soft}monolingual: "
        "a language's queries against that language's pairs only; other subsets restrict the queries, never "
        "the candidates. A query's rank is where its best-scoring correct candidate lands among the wrong ones.",
        "",
        *(f"- {note}" for note in notes),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(_cells(*row)) + " |" for row in report_rows(report)]
    timing = report["timing"]
    lines += ["", f"Embedding took {timing['embed_s']:.1f} s, scoring and ranking {timing['score_and_rank_s']:.1f} s."]
    lines.append("")
    return "\n".join(lines)


def model_index_results(
    report: dict,
    dataset_name: str,
    dataset_type: str | None = None,
    dataset_split: str = "test",
    task_type: str = "zero-shot-audio-classification",
    task_name: str = "Audio retrieval",
) -> list:
    """huggingface_hub EvalResult entries (hard protocol: HITS@1, MRR, meanR per direction) for
    `ModelCardData(eval_results=...)`. The direction goes in `metric_config`, the correct-set
    and tie rules in `metric_args` and the metric's name."""
    from huggingface_hub import EvalResult

    protocol_notes(report)  # refuses a report without its rules
    rules = {"correct_set": report["correct_set"], "ties": report["ties"]}
    if report.get("hubness", {}).get("method") == "csls":
        rules["hubness"] = f"csls k={report['hubness']['k']}"

    return [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_type or dataset_name,
            dataset_name=dataset_name,
            dataset_split=dataset_split,
            metric_type=key,
            metric_name=f"{COLUMNS[key]} ({ARROWS[direction]}, {report['correct_set']})",
            metric_config=direction,
            metric_args=rules,
            metric_value=report[direction][key],
        )
        for direction in DIRECTIONS
        for key in ("hits@1", "mrr", "mean_rank")
    ]
