"""A Gradio page over an index: search spoken audio with text, and zero-shot classify a clip.

Search: a text box (any language the sentence encoder knows) → the best files, each with a
player, its score, and its transcript and language when the index has them.
Zero-shot classification: a clip and comma-separated labels → a score per label.

Everything stays on this machine: no share link, no analytics, and system fonts instead of the
default theme's web fonts, so the page works offline.
"""

import os

MAX_RESULTS = 10
COLUMNS = ["rank", "score", "file", "transcript", "language", "duration (s)"]


def build_app(search, max_results=MAX_RESULTS):
    """The page for a `ClaspSearch`; `launch()` it with `launch_options(search)`."""
    import gradio as gr

    def run_search(query):
        if not query or not query.strip():
            raise gr.Error("Type something to search for.")
        hits = search.text(query, k=max_results)
        rows = [[h["rank"], round(h["score"], 4), os.path.basename(h["path"]), h.get("text", ""), h.get("language", ""),
                 round(h["duration"], 1)] for h in hits]
        players = [
            gr.Audio(value=h["path"], label=f"{h['rank']}. {os.path.basename(h['path'])}  ({h['score']:.3f})", visible=True)
            for h in hits
        ]
        players += [gr.Audio(value=None, visible=False)] * (max_results - len(hits))
        return [rows, *players]

    def run_classification(audio_path, labels):
        if not audio_path:
            raise gr.Error("Upload or record a clip first.")
        try:
            return search.classify(audio_path, labels.split(",") if labels else [])
        except ValueError as error:  # an unreadable clip, or no labels: say so on the page
            raise gr.Error(str(error)) from None

    # Gradio copies every file it plays into its cache: clear copies older than an hour, hourly.
    with gr.Blocks(title="CLASP speech search", delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "# CLASP speech search\n"
            f"{len(search.index)} recordings, searched by what is said in them. Type in any language."
        )
        with gr.Tab("Search"):
            with gr.Row():
                query = gr.Textbox(label="Query", placeholder="what was said, in any language", scale=4, elem_id="query")
                button = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
            table = gr.Dataframe(headers=COLUMNS, interactive=False, elem_id="results", wrap=True)
            players = [gr.Audio(type="filepath", interactive=False, visible=False, buttons=["download"], elem_id=f"player-{i}")
                       for i in range(max_results)]
            for trigger in (button.click, query.submit):
                trigger(run_search, inputs=query, outputs=[table, *players])
        with gr.Tab("Zero-shot classification"):
            clip = gr.Audio(type="filepath", sources=["upload", "microphone"], label="Audio", elem_id="clip")
            labels = gr.Textbox(label="Labels, comma-separated", placeholder="weather report, football, cooking",
                                elem_id="labels")
            classify = gr.Button("Classify", variant="primary", elem_id="classify-button")
            scores = gr.Label(label="Scores", elem_id="scores")
            classify.click(run_classification, inputs=[clip, labels], outputs=scores)
    return app


def launch_options(search) -> dict:
    """Keyword arguments for `app.launch` that keep the page local and let it play the indexed files.

    Gradio serves only files under `allowed_paths`: the folders that hold indexed audio, and no
    more (not their common ancestor, which could be /).
    """
    import gradio as gr

    folders = sorted({os.path.dirname(path) for path in search.index.paths()})
    system_fonts = dict(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    return dict(allowed_paths=folders, share=False, ssr_mode=False, theme=gr.themes.Default(**system_fonts))


__all__ = ["build_app", "launch_options"]
