"""The paper notebooks' hard evaluation, re-implemented as they ran it (the baseline to beat).

For every query, a Python loop over every candidate calls sklearn's `cosine_similarity` on one
pair at a time, the N similarities are sorted, and the gold's position in that order is its
rank; the metrics are then summed in Python loops. The notebooks needed 3 h 12 min for the
11,411 x 11,411 test matrix. Nothing here is vectorised on purpose: this is what we replace.
"""

from sklearn.metrics.pairwise import cosine_similarity


def notebook_hard_ranks(queries, candidates, query_rows):
    """Rank (1 = first) of candidate i among all candidates for each query row i in `query_rows`."""
    ranks = []
    for i in query_rows:
        similarities = []
        for j in range(len(candidates)):
            similarities.append(cosine_similarity([queries[i]], [candidates[j]])[0][0])
        order = sorted(range(len(candidates)), key=lambda j: similarities[j], reverse=True)
        ranks.append(order.index(i) + 1)
    return ranks


def notebook_metrics(ranks):
    """HITS@1, MRR and mean rank, as the notebooks summed them."""
    hits, reciprocal, total = 0, 0.0, 0
    for rank in ranks:
        if rank == 1:
            hits += 1
        reciprocal += 1.0 / rank
        total += rank
    return {"hits@1": hits / len(ranks), "mrr": reciprocal / len(ranks), "mean_rank": total / len(ranks)}
