"""`clasp search`: the files of an index that best match a text (any language) or an audio example.

    clasp search --index INDEX_DIR --query "text in any language" [-k 10] [--json]
    clasp search --index INDEX_DIR --audio example.wav

--hubness csls re-ranks text queries' results by CSLS, 2 cos - r(file), r a file's closeness to
training texts in general (an index built with `clasp index --hubness-bank`; see search_clasp/index.py):
files that sit near every query ("hubs") stop crowding the top. The JSON then has "csls_score".

The index remembers its model; `--model` points elsewhere (the same model, moved) and is refused
if it is not the same model.
"""

import json
import sys


def register(subparsers):
    parser = subparsers.add_parser("search", help="search an index with text or an audio example")
    parser.add_argument("--index", required=True, help="an index folder made by `clasp index`")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--query", help="text in any language the model's sentence encoder knows")
    query.add_argument("--audio", help="an audio file: find files that say something similar")
    parser.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of results")
    parser.add_argument("--model", default=None, help="the model folder (default: the one stored in the index)")
    parser.add_argument("--nprobe", type=int, default=None, help="ivf: clusters scanned per query (default 16)")
    parser.add_argument("--ef", type=int, default=None, help="hnsw: candidates kept while searching (default 64)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--hubness", choices=("none", "csls"), default="none",
                        help="text queries: none = rank by cosine (default); csls = hubness-corrected "
                             "(the index needs --hubness-bank)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from search_clasp.search import ClaspSearch

    if args.k < 1:
        raise ValueError(f"-k must be at least 1, got {args.k}")
    if args.hubness != "none" and args.query is None:
        raise ValueError("--hubness corrects text queries (--query); its bank holds training texts")
    # A text query needs only the sentence encoder: the audio backbones are not loaded for it.
    search = ClaspSearch(args.index, args.model, device=args.device, text_only=args.query is not None)
    if args.query is not None:
        hits = search.text(args.query, k=args.k, nprobe=args.nprobe, ef=args.ef, hubness=args.hubness)
    else:
        hits = search.audio(args.audio, k=args.k, nprobe=args.nprobe, ef=args.ef)
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=1))
        return 0
    score = "csls_score" if args.hubness == "csls" else "score"  # the one the results are ranked by
    print(f"{'rank':>4}  {score.split('_')[0]:>6}  {'dur s':>6}  path / transcript")
    for hit in hits:
        print(f"{hit['rank']:>4}  {hit[score]:>6.3f}  {hit['duration']:>6.1f}  {hit['path']}")
        if "text" in hit:
            print(f"{'':>20}  {hit['text']}" + (f"  [{hit['language']}]" if "language" in hit else ""))
    timing = search.last_timing
    print(f"({len(hits)} result(s); query embedded in {timing['embed_s'] * 1000:.0f} ms, "
          f"searched in {timing['search_s'] * 1000:.1f} ms)", file=sys.stderr)
    return 0
