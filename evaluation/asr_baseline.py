"""The cascade CLASP is compared against: transcribe the speech, then retrieve with the text.

Whisper transcribes each clip (its language forced from the pair when Whisper knows it); the
same CLASP model's text encoder embeds the transcripts; the transcripts then stand in for the
audio in the same retrieval protocol: audio -> text is transcript query vs reference texts,
text -> audio is text query vs transcripts. The paper's baseline was HuBERT-CTC -> LaBSE.
"""

import hashlib
import json
import os
import time
import unicodedata
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from evaluation.embed import embed_texts, length_batches
from evaluation.pairs import prepared_clip
from evaluation.protocols import retrieval_report

# Written without spaces between words: a "word" error rate would count whole sentences.
CHARACTER_LANGUAGES = {"zh", "ja", "yue", "th", "lo", "km", "my"}


def base_language(code: str) -> str:
    """"zh-CN" -> "zh", "pt_BR" -> "pt"."""
    return code.replace("_", "-").split("-")[0].lower()


def error_units(text: str, language: str = "") -> list[str]:
    """Lowercased words with punctuation and symbols removed; characters for zh, ja, ..."""
    text = unicodedata.normalize("NFKC", text).casefold()
    # Punctuation becomes a word boundary, as in Whisper's basic normaliser ("well-known" -> 2 words).
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    if base_language(language) in CHARACTER_LANGUAGES:
        return [c for c in text if not c.isspace()]
    return text.split()


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref_unit in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_unit in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_unit != hyp_unit))
    return row[-1]


def error_rates(references, hypotheses, languages) -> dict:
    """Corpus-level error rate (total edits / total reference units), overall and per language.

    Words for most languages, characters for those in CHARACTER_LANGUAGES (listed under
    "character_level"), so "all" mixes the two when both kinds are present.
    """
    edits, units = defaultdict(int), defaultdict(int)
    for reference, hypothesis, language in zip(references, hypotheses, languages):
        ref, hyp = error_units(reference, language), error_units(hypothesis, language)
        edits[language] += edit_distance(ref, hyp)
        units[language] += len(ref)
    return {
        "all": sum(edits.values()) / max(sum(units.values()), 1),
        "by_language": {language: edits[language] / max(units[language], 1) for language in sorted(units)},
        "character_level": sorted(lang for lang in units if base_language(lang) in CHARACTER_LANGUAGES),
    }


class WhisperTranscriber:
    """`transcriber(waveforms, language) -> texts`: Whisper through transformers' ASR pipeline.

    waveforms: 16 kHz mono float32 arrays; language: the code all of them are spoken in, or None
    to let Whisper detect it. Any callable with this signature can stand in (tests use a fake).
    """

    # A bound on the transcript's length: no speech is faster than this many tokens a second, so a
    # decoder stuck in a repetition loop stops there instead of at Whisper's 448 tokens.
    MAX_TOKENS_PER_SECOND = 15

    def __init__(self, model_dir, device="cpu", batch_size: int = 8, num_beams: int = 1):
        from transformers import pipeline

        if not os.path.isdir(model_dir):
            raise FileNotFoundError(
                f"{model_dir}: no Whisper model folder; build it with `clasp backbones build` or pass --asr-model"
            )
        self.pipeline = pipeline("automatic-speech-recognition", model=str(model_dir), device=device)
        # What a transcript depends on besides the clip: which Whisper, and how it decodes.
        self.identity = f"{os.path.realpath(model_dir)}|num_beams={num_beams}|{self.MAX_TOKENS_PER_SECOND}tok/s"
        self.batch_size = batch_size
        # transformers' ASR pipeline decodes with 5 beams by default (as openai's whisper does); greedy
        # is ~5x cheaper on a CPU and what CLASP's speed is compared with unless asked otherwise.
        self.num_beams = num_beams
        lang_to_id = getattr(self.pipeline.model.generation_config, "lang_to_id", None) or {}
        self.languages = {token.strip("<|>") for token in lang_to_id}

    def __call__(self, waveforms, language=None) -> list[str]:
        longest_s = max(len(waveform) for waveform in waveforms) / 16000
        generate_kwargs = {"task": "transcribe", "num_beams": self.num_beams,
                           "max_new_tokens": min(int(16 + self.MAX_TOKENS_PER_SECOND * longest_s), 440)}
        if language is not None and base_language(language) in self.languages:
            generate_kwargs["language"] = base_language(language)
        outputs = self.pipeline(
            [{"raw": waveform, "sampling_rate": 16000} for waveform in waveforms],
            batch_size=self.batch_size,
            generate_kwargs=generate_kwargs,
        )
        return [output["text"] for output in outputs]


class TranscriptCache:
    """Transcripts already made, one JSON line per clip, appended as each batch is transcribed.

    The ASR baseline is the slow part of an evaluation (about a second a clip on a CPU): with a
    cache, an evaluation that was killed resumes where it stopped, and a second CLASP model
    evaluated on the same clips reuses the transcripts (and their measured seconds). A line is
    keyed by the clip (its name, length and language) and the transcriber's identity, so another
    Whisper or another decoding never reads it. A cut-off last line (a kill mid-write) is ignored.
    """

    def __init__(self, path, transcriber):
        self.path = path
        self.transcriber = getattr(transcriber, "identity", type(transcriber).__qualname__)
        self.entries = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        self.entries[entry["key"]] = (entry["text"], entry["seconds"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        if self.file.tell() and not open(path, "rb").read()[-1:] == b"\n":
            self.file.write("\n")  # end the line a killed run left half-written

    def key(self, pair, length) -> str:
        clip = f"{pair['name']}|{length}|{pair.get('language') or ''}|{self.transcriber}"
        return hashlib.sha256(clip.encode()).hexdigest()

    def get(self, key):
        return self.entries.get(key)

    def add(self, key, text, seconds):
        self.entries[key] = (text, seconds)
        self.file.write(json.dumps({"key": key, "text": text, "seconds": seconds}, ensure_ascii=False) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def transcribe_pairs(pairs, lengths, transcriber, feature_extractor, batch_size: int, cache_path=None) -> tuple[list[str], float]:
    """Transcripts in the pairs' order, and the seconds spent transcribing (waveform in memory ->
    text). Batches hold one language each, so the language can be forced per batch. With
    `cache_path` (see TranscriptCache), clips transcribed before are not transcribed again and
    count with the seconds they took then."""
    transcripts = [""] * len(pairs)
    transcribe_s = 0.0
    cache = TranscriptCache(cache_path, transcriber) if cache_path else None
    keys = [cache.key(pair, length) for pair, length in zip(pairs, lengths)] if cache else None
    by_language = defaultdict(list)
    for index, pair in enumerate(pairs):
        if cache and cache.get(keys[index]) is not None:
            transcripts[index], seconds = cache.get(keys[index])
            transcribe_s += seconds
        else:
            by_language[pair["language"] or None].append(index)
    try:
        with tqdm(total=len(pairs), initial=len(pairs) - sum(map(len, by_language.values())), desc="transcribing",
                  unit="clip") as bar:
            for language, indices in by_language.items():
                indices = np.asarray(indices)
                for batch in length_batches(np.asarray(lengths)[indices], batch_size):
                    batch = indices[batch]
                    waveforms = [prepared_clip(pairs[i], feature_extractor).numpy() for i in batch]
                    started = time.perf_counter()
                    texts = transcriber(waveforms, language)
                    seconds = time.perf_counter() - started
                    transcribe_s += seconds
                    for i, text in zip(batch, texts):
                        transcripts[i] = text.strip()
                        if cache:
                            cache.add(keys[i], transcripts[i], seconds / len(batch))
                    bar.update(len(batch))
    finally:
        if cache:
            cache.close()
    return transcripts, transcribe_s


def asr_baseline_report(model, processor, pairs, lengths, text_embeds, transcriber, *, batch_size: int, cache_path=None,
                        **report_kwargs) -> dict:
    """The retrieval report with transcripts in place of audio, plus transcripts, WER and speed.

    text_embeds: the CLASP text embeddings of the pairs' texts (already computed for the model's
    own report). report_kwargs: what `retrieval_report` got for the model (groups, languages,
    breakdowns, cross_lingual, correct_set, ties, soft_k, seed), so both reports use the same
    protocol and draws.
    """
    started = time.perf_counter()
    transcripts, transcribe_s = transcribe_pairs(pairs, lengths, transcriber, processor.feature_extractor, batch_size,
                                                 cache_path=cache_path)
    transcript_embeds = embed_texts(model, processor, transcripts, batch_size, desc="transcripts")
    report = retrieval_report(transcript_embeds, text_embeds, embed_s=time.perf_counter() - started, **report_kwargs)
    report["transcripts"] = transcripts
    report["wer"] = error_rates([p["text"] for p in pairs], transcripts, [p["language"] for p in pairs])
    report["seconds_per_clip"] = transcribe_s / len(pairs)
    report["decoding"] = {"num_beams": getattr(transcriber, "num_beams", None)}
    return report
