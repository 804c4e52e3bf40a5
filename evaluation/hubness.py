"""Hubness correction: CSLS scores against a bank of training embeddings of the query modality.

A "hub" is a candidate that sits near many queries, and so ranks high for queries it does not
answer. Cross-domain similarity local scaling (CSLS; Conneau et al., "Word Translation Without
Parallel Data", ICLR 2018, eq. 6) discounts each candidate c by how close it is to queries in
general:

    csls(q, c) = 2 cos(q, c) - r_bank(c) - r(q)

where r_bank(c) is the mean cosine of c to its k nearest neighbours in a bank of embeddings of the
QUERY modality (text -> audio: a bank of training-text embeddings; audio -> text: a bank of
training-audio embeddings). r(q) is the same for every candidate of a query, so it does not change
any ranking and is left out. The bank comes from the training split, never from the evaluated
queries: a test query's rank does not depend on the other test queries.

A bank file is a safetensors file with `audio_embeds` [B, D] and `text_embeds` [B, D] (any float
dtype; row i of each a training pair) and, in its header metadata, `csls_k`: the k chosen on
validation (`choose_csls_k`; train_accelerate.py writes one beside the model it exports,
scripts/hubness_sweep.py one for a saved model and its feature cache). Saved in a model's folder as BANK_FILE, it is
that model's default bank, and `clasp export` copies it into the Hub folder: users of the model
get the correction without the training data. It is not part of the model: loading ignores it,
and it does not change the model's identity (search_clasp.index.model_identity).
"""

import os

import numpy as np

from evaluation.protocols import DIRECTIONS, as_numpy, retrieval_report
from evaluation.retrieval_metrics.rank_metrics import refuse_non_finite

BANK_FILE = "hubness_bank.safetensors"
CSLS_KS = (1, 5, 10, 20, 50)  # the k searched on validation
# Candidates scored against the bank at once: as many rows as 64 MiB of float32 scores hold.
BLOCK_BYTES = 64 * 2**20


def csls_penalty(candidates, bank, k: int) -> np.ndarray:
    """r_bank(c): each candidate's mean cosine to its k nearest bank rows, float32 [N].

    candidates [N, D], bank [B, D]: numpy or torch, L2-normalised rows (cosine = dot product).
    The CSLS score of query q and candidate c is then 2 cos(q, c) - r_bank(c) (Conneau et al. 2018).
    ValueError when k is not in [1, B], the dimensions differ, or a row is NaN or infinite (naming it).
    """
    candidates, bank = as_numpy(candidates), as_numpy(bank)
    if candidates.ndim != 2 or bank.ndim != 2 or candidates.shape[1] != bank.shape[1]:
        raise ValueError(f"candidates {candidates.shape} and hubness bank {bank.shape} must be [N, D] and [B, D]")
    if not 1 <= k <= len(bank):
        raise ValueError(f"csls k must lie in [1, {len(bank)}] (the hubness bank's rows), got {k}")
    refuse_non_finite(candidates, "candidates")
    refuse_non_finite(bank, "hubness bank")
    penalty = np.empty(len(candidates), dtype=np.float32)
    rows = max(1, BLOCK_BYTES // (4 * len(bank)))
    for start in range(0, len(candidates), rows):
        scores = candidates[start : start + rows] @ bank.T
        # The k largest of each row, unordered: a partition, not a sort.
        penalty[start : start + rows] = np.partition(scores, len(bank) - k, axis=1)[:, len(bank) - k :].mean(axis=1)
    return penalty


def retrieval_figures(audio_embeds, text_embeds, *, groups=None, texts=None, bank=None, k=None) -> dict:
    """Hard-protocol HITS@1, MRR and mean rank of both directions, {direction: {"hits@1", "mrr",
    "mean_rank"}, "mean_mrr": the mean of both MRRs}: by cosine when k is None, else by CSLS with
    `bank` ({"audio_embeds", "text_embeds"} [B, D]) and k. audio_embeds, text_embeds [N, D], groups
    and texts: as `protocols.retrieval_report` takes them (the same-group correct set)."""
    report = retrieval_report(audio_embeds, text_embeds, groups=groups, texts=texts, soft_k=2,  # soft: unused, cheapest
                              hubness="none" if k is None else "csls", hubness_bank=bank, csls_k=k or 1)
    figures = {direction: {key: report[direction][key] for key in ("hits@1", "mrr", "mean_rank")} for direction in DIRECTIONS}
    figures["mean_mrr"] = float(np.mean([figures[direction]["mrr"] for direction in DIRECTIONS]))
    return figures


def choose_csls_k(audio_embeds, text_embeds, bank, *, groups=None, texts=None, ks=CSLS_KS) -> tuple[int, dict]:
    """The CSLS k with the best mean MRR of both directions on validation pairs (hard protocol; a tie
    goes to the k listed first), and every figure: (k, {None: cosine figures, k: CSLS figures for
    each k}) in `retrieval_figures`' form.

    audio_embeds, text_embeds [N, D]: the validation pairs, L2-normalised; bank: the training pairs'
    {"audio_embeds", "text_embeds"} [B, D]; groups, texts: which validation rows are correct for
    each other (as `retrieval_report`). A k above B is left out; ValueError when none is left.
    The k is chosen even when cosine beats every k: a caller compares figures[None] itself.
    """
    usable = [k for k in ks if 1 <= k <= len(bank["text_embeds"])]
    if not usable:
        raise ValueError(f"no csls k of {list(ks)} lies in [1, {len(bank['text_embeds'])}] (the hubness bank's rows)")
    figures = {k: retrieval_figures(audio_embeds, text_embeds, groups=groups, texts=texts, bank=bank, k=k)
               for k in [None, *usable]}
    return max(usable, key=lambda k: figures[k]["mean_mrr"]), figures


def load_hubness_bank(path) -> tuple[dict, int | None]:
    """({"audio_embeds", "text_embeds"}: float32 [B, D] L2-normalised, csls_k from the header or None).

    ValueError naming the file when it is missing, unreadable, lacks a tensor, holds tensors of
    two shapes, zero rows or NaN / infinite values, or a header csls_k that is not an integer in [1, B].
    """
    import json

    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such hubness bank file")
    try:
        with safe_open(path, framework="pt") as f:  # pt: numpy cannot read bfloat16
            missing = {"audio_embeds", "text_embeds"} - set(f.keys())
            if missing:
                raise ValueError(f"{path}: the hubness bank lacks {sorted(missing)}")
            bank = {name: f.get_tensor(name).double().numpy() for name in ("audio_embeds", "text_embeds")}
            header = f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    shapes = {name: tuple(embeds.shape) for name, embeds in bank.items()}
    if shapes["audio_embeds"] != shapes["text_embeds"]:  # row i of each is one training pair, in one space
        raise ValueError(f"{path}: audio_embeds {shapes['audio_embeds']} and text_embeds {shapes['text_embeds']} "
                         "must have one shape [B, D]")
    for name, embeds in bank.items():
        if embeds.ndim != 2 or len(embeds) == 0:
            raise ValueError(f"{path}: {name} must be [B, D] with B > 0, got {tuple(embeds.shape)}")
        try:
            refuse_non_finite(embeds, name)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        norms = np.linalg.norm(embeds, axis=1, keepdims=True)
        if not (norms > 0).all():
            raise ValueError(f"{path}: {name} rows {np.flatnonzero(~(norms[:, 0] > 0)).tolist()[:10]} are all zeros")
        bank[name] = (embeds / norms).astype(np.float32)
    if "csls_k" not in header:
        return bank, None
    try:
        k = json.loads(header["csls_k"])
    except ValueError:
        k = None
    if type(k) is not int or not 1 <= k <= len(bank["text_embeds"]):
        raise ValueError(f"{path}: csls_k {header['csls_k']!r} in its header; it must be an integer in "
                         f"[1, {len(bank['text_embeds'])}] (the bank's rows)")
    return bank, k


def save_hubness_bank(path, audio_embeds, text_embeds, csls_k: int | None = None, **metadata) -> None:
    """Write a bank file (float16 tensors; `csls_k` and any string `metadata` in the header),
    whole (data_clasp.files.write_atomically)."""
    import json

    import torch
    from safetensors.torch import save

    from data_clasp.files import write_atomically

    header = {key: str(value) for key, value in metadata.items()}
    if csls_k is not None:
        header["csls_k"] = json.dumps(int(csls_k))
    tensors = {name: torch.from_numpy(as_numpy(embeds)).half().contiguous()
               for name, embeds in (("audio_embeds", audio_embeds), ("text_embeds", text_embeds))}
    write_atomically(path, save(tensors, metadata=header))
