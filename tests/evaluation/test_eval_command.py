"""`clasp eval --embeddings`: the command-line contract other tools rely on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from clasp_cli.main import main

REPO = Path(__file__).resolve().parents[2]
REPORT_KEYS = {"audio_to_text", "text_to_audio", "ties", "correct_set", "hubness", "soft", "by_language", "monolingual",
               "cross_lingual", "timing", "num_queries"}
METRIC_KEYS = {"hits@1", "recall@5", "recall@10", "mrr", "mean_rank", "median_rank"}


def save_pairs(path, num_rows=40, dim=16, metadata=None, **overrides):
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(num_rows, dim, generator=generator)
    tensors = {"audio_embeds": audio, "text_embeds": audio + 0.3 * torch.randn(num_rows, dim, generator=generator)}
    tensors.update(overrides)
    save_file(tensors, str(path), metadata=metadata)
    return path


def test_embeddings_to_json_and_markdown(tmp_path):
    languages = ["en"] * 30 + ["sw"] * 10
    groups = [str(i // 2) if i < 4 else str(i) for i in range(40)]
    metadata = {"languages": json.dumps(languages), "groups": json.dumps(groups)}
    pairs = save_pairs(tmp_path / "pairs.safetensors", metadata=metadata)
    output, markdown = tmp_path / "out" / "report.json", tmp_path / "report.md"
    completed = subprocess.run(
        [sys.executable, "-m", "clasp_cli.main", "eval", "--embeddings", str(pairs), "--output", str(output),
         "--soft-k", "10", "--seed", "1", "--markdown", str(markdown)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(output.read_text())
    assert set(report) == REPORT_KEYS
    assert set(report["audio_to_text"]) == METRIC_KEYS and set(report["soft"]["text_to_audio"]) == METRIC_KEYS
    assert report["soft"]["k"] == 10 and report["num_queries"] == 40
    assert set(report["by_language"]) == {"en", "sw"}
    assert "HITS@1" in completed.stdout and "language=sw" in completed.stdout
    assert markdown.read_text().count("\n|") >= 8
    assert [p.name for p in output.parent.iterdir()] == ["report.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path, "no such file"),
        (lambda path: save_pairs(path, text_embeds=torch.randn(41, 16)), "must both be [N, D]"),
        (lambda path: save_pairs(path, text_embeds=torch.randn(40, 16).index_fill(0, torch.tensor([3, 17]), float("nan"))),
         "text_embeds rows [3, 17]: NaN or infinite values"),
        (lambda path: save_pairs(path, metadata={"groups": json.dumps(["a"] * 40)}), "same-text' needs the texts"),
        (lambda path: save_pairs(path, metadata={"languages": json.dumps(["en"] * 3)}), "list of 40 entries"),
        (lambda path: save_pairs(path, metadata={"groups": json.dumps([None] + ["a"] * 39)}),
         "metadata 'groups' must hold strings; entries [0] do not"),
        (lambda path: save_pairs(path, audio_embeds=torch.randn(40, 16).index_fill(0, torch.tensor([5]), 0.0)),
         "audio_embeds rows [5] are all zeros"),
    ],
    ids=["missing", "shapes", "nan", "metadata", "same-text-without-texts", "null-group", "zero-row"],
)
def test_bad_input_names_the_file_and_exits_2(tmp_path, capsys, make, message):
    path = make(tmp_path / "pairs.safetensors")
    code = main(["eval", "--embeddings", str(path), "--output", str(tmp_path / "report.json"), "--soft-k", "5",
                 "--correct-set", "same-text" if "same-text" in message else "same-group"])
    error = capsys.readouterr().err
    assert code == 2 and str(path) in error and message in error
    assert not (tmp_path / "report.json").exists()


def test_rows_of_any_scale_are_compared_by_direction(tmp_path):
    """A row with values near 1e20 has a float32 norm of inf: it must still be its direction (before,
    it became a row of zeros that tied with everything)."""
    audio = torch.randn(40, 16, generator=torch.Generator().manual_seed(2))
    text = audio + 0.01 * torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    plain = save_pairs(tmp_path / "plain.safetensors", audio_embeds=audio, text_embeds=text)
    scaled = save_pairs(tmp_path / "scaled.safetensors", audio_embeds=audio.index_fill(0, torch.tensor([7]), 0) +
                        torch.zeros(40, 16).index_copy(0, torch.tensor([7]), audio[7:8] * 1e20), text_embeds=text)
    reports = []
    for path in (plain, scaled):
        assert main(["eval", "--embeddings", str(path), "--output", str(path.with_suffix(".json"))]) == 0
        reports.append(json.loads(path.with_suffix(".json").read_text()))
    assert reports[1]["audio_to_text"] == reports[0]["audio_to_text"]
    assert reports[1]["text_to_audio"] == reports[0]["text_to_audio"]


def test_correct_set_and_tie_rules_are_options(tmp_path, capsys):
    # Rows 0 and 1 read one sentence (group "s") in two languages, with different texts.
    groups = ["s", "s"] + [str(i) for i in range(2, 40)]
    texts = ["the cat", "le chat"] + [f"sentence {i}" for i in range(2, 40)]
    audio = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    text = audio.clone()
    text[0], text[1] = audio[1], audio[0]  # each audio's best text is the other reading
    path = save_pairs(tmp_path / "pairs.safetensors", audio_embeds=audio, text_embeds=text,
                      metadata={"groups": json.dumps(groups), "texts": json.dumps(texts)})
    reports = {}
    for rule in ("same-group", "same-text"):
        output = tmp_path / f"{rule}.json"
        assert main(["eval", "--embeddings", str(path), "--output", str(output), "--correct-set", rule,
                     "--ties", "pessimistic"]) == 0
        reports[rule] = json.loads(output.read_text())
        assert reports[rule]["correct_set"] == rule and reports[rule]["ties"] == "pessimistic"
        assert f"correct set: {rule}" in capsys.readouterr().out
    assert reports["same-group"]["audio_to_text"]["hits@1"] == 1  # the other reading counts
    assert reports["same-text"]["audio_to_text"]["hits@1"] == pytest.approx(38 / 40)  # it does not
    # 40 pairs cannot fill a pool of 100: the soft protocol takes every wrong candidate there is.
    assert reports["same-group"]["soft"]["k"] == 39 and reports["same-text"]["soft"]["k"] == 40
    assert reports["same-text"]["soft"]["k_requested"] == 100


@pytest.mark.parametrize(
    "argv",
    [
        ["--embeddings", "e.safetensors", "--correct-set", "same-sentence"],
        ["--embeddings", "e.safetensors", "--ties", "optimistic"],
        ["--embeddings", "e.safetensors", "--manifest", "m.jsonl"],  # model-only options with --embeddings
        ["--embeddings", "e.safetensors", "--asr-model", "whisper"],
        ["--model", "dir"],  # no pairs to embed
        ["--model", "dir", "--manifest", "m.jsonl", "--data", "d"],  # two sources of pairs
    ],
)
def test_option_mistakes_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", *argv, "--output", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2


def test_cosine_not_raw_dot_product(tmp_path):
    # Scaling rows must not change anything: the command normalises, as the paper's cosine does.
    a = save_pairs(tmp_path / "a.safetensors")
    scale = torch.linspace(0.1, 10, 40)[:, None]
    generator = torch.Generator().manual_seed(0)
    audio = torch.randn(40, 16, generator=generator)
    text = audio + 0.3 * torch.randn(40, 16, generator=generator)
    b = save_pairs(tmp_path / "b.safetensors", audio_embeds=audio * scale, text_embeds=text / scale)
    reports = []
    for path in (a, b):
        code = main(["eval", "--embeddings", str(path), "--output", str(path.with_suffix(".json")), "--soft-k", "5"])
        assert code == 0
        reports.append(json.loads(path.with_suffix(".json").read_text()))
    for unscaled, scaled in ((r[d] for r in reports) for d in ("audio_to_text", "text_to_audio")):
        assert scaled == pytest.approx(unscaled)
