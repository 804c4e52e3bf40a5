"""`make demo`'s search check (English test speech searched with French sentences) with and without CSLS.

    OMP_NUM_THREADS=1 python scripts/hubness_search_check.py --index artifacts/demo-small/search-en.index \
        --data artifacts/demo-small/data --bank /tmp/csls/hubness_bank.safetensors --output /tmp/csls

The index is copied to OUTPUT/search-en.index (the original is left as it is), the bank's penalties
are added to the copy, and every French query is searched both ways; a hit is right when it is a
reading of the query's sentence group (as clasp_cli/demo_command.py counts it).
"""

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clasp_cli.demo_command import test_rows  # noqa: E402
from search_clasp import ClaspIndex, ClaspSearch  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--data", required=True, help="the `clasp data` folder the index's clips come from")
    parser.add_argument("--bank", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)

    copy = os.path.join(args.output, "search-en.index")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.index, copy)
    index = ClaspIndex(copy)
    index.set_hubness_bank(args.bank)
    index.write_hubness()
    index.close()

    rows = test_rows(args.data)
    group_of = {os.path.abspath(row["audio"]): row["group"] for row in rows if row["language"] == "en"}
    queries = {row["group"]: row["translations"]["fr"] for row in rows if row["language"] == "en" and "fr" in row["translations"]}
    search = ClaspSearch(copy, device="cpu", text_only=True)
    result = {"indexed_clips": len(search.index), "queries": len(queries), "csls_k": search.index.info["csls_k"]}
    for hubness in ("none", "csls"):
        ranks = np.array([next((hit["rank"] for hit in search.text(query, k=args.k, hubness=hubness)
                                if group_of.get(os.path.abspath(hit["path"])) == group), args.k + 1)
                          for group, query in queries.items()], dtype=float)
        result[hubness] = {"top1": float((ranks == 1).mean()), f"hits@{args.k}": float((ranks <= args.k).mean()),
                           f"mrr@{args.k}": float(np.where(ranks <= args.k, 1.0 / ranks, 0.0).mean())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
