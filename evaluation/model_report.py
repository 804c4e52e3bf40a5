"""A CLASP model's retrieval report on speech–text pairs, with the ASR baseline beside it.

Clips that cannot be read are left out and listed under "failed"; the report covers the rest.
"""

from evaluation.asr_baseline import asr_baseline_report
from evaluation.embed import embed_pairs
from evaluation.pairs import usable_clips
from evaluation.protocols import retrieval_report

BREAKDOWNS = ("source", "category")  # by_language is always there; these when the pairs have them


def model_report(model, processor, pairs, *, batch_size=16, correct_set="same-group", ties="expected", soft_k=100,
                 seed=0, transcriber=None, asr_cache=None, also_csls=None, **hubness) -> dict:
    """The report of `retrieval_report` for the model's embeddings of `pairs`, plus
    "failed" ([{path, reason}] of clips left out), timing["audio_embed_s_per_clip"], and
    "asr_baseline" when a `transcriber` (see `asr_baseline.WhisperTranscriber`) is given; `asr_cache`: a
    transcript cache file (asr_baseline.TranscriptCache) to resume from and add to.
    correct_set, ties, soft_k, seed: as `retrieval_report` takes them, the same for the baseline.
    hubness: `retrieval_report`'s hubness, hubness_bank and csls_k, for CLASP only (its bank holds
    CLASP audio embeddings; the baseline ranks transcripts, another space). also_csls: those keywords
    for a second ranking of the same embeddings (nothing is encoded twice), whose `retrieval_report`
    is report["csls"]: the report with and without the correction at once.
    ValueError when no clip can be used.
    """
    lengths, failed, kept = usable_clips(pairs, processor.feature_extractor)
    if not kept:
        raise ValueError(f"none of the {len(pairs)} clips could be read (first: {failed[0]['path']}: {failed[0]['reason']})")
    pairs = [pairs[i] for i in kept]
    report_kwargs = dict(
        groups=[p["group"] for p in pairs],
        texts=[p["text"] for p in pairs],
        languages=[p["language"] for p in pairs],
        breakdowns={name: [p[name] for p in pairs] for name in BREAKDOWNS if any(p.get(name) for p in pairs)},
        correct_set=correct_set,
        ties=ties,
        soft_k=soft_k,
        seed=seed,
    )
    embedded = embed_pairs(model, processor, pairs, lengths, batch_size)
    report_kwargs["cross_lingual"] = embedded["cross_lingual"]
    report = retrieval_report(embedded["audio_embeds"], embedded["text_embeds"], embed_s=embedded["embed_s"], **report_kwargs,
                              **hubness)
    if also_csls:
        report["csls"] = retrieval_report(embedded["audio_embeds"], embedded["text_embeds"], **report_kwargs, **also_csls)
    report["timing"]["audio_embed_s_per_clip"] = embedded["audio_embed_s_per_clip"]
    report["failed"] = failed
    if transcriber is not None:
        report["asr_baseline"] = asr_baseline_report(
            model, processor, pairs, lengths, embedded["text_embeds"], transcriber, batch_size=batch_size,
            cache_path=asr_cache, **report_kwargs
        )
    return report
