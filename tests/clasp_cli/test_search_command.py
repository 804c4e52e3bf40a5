import json

import pytest
import soundfile

from clasp_cli.main import main
from tiny import save_tiny_clasp, tone


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """(model folder, index folder, the indexed clips) with transcripts for the first two clips."""
    root = tmp_path_factory.mktemp("search")
    model_dir = save_tiny_clasp(root / "model")
    clips = []
    for i in range(5):
        clips.append(root / f"clip{i}.wav")
        soundfile.write(clips[-1], tone(0.5 + 0.4 * i, freq=100 + 70 * i, seed=i), 16000)
    rows = [{"audio": clips[0].name, "text": "le chat est sur la table", "language": "fr"},
            {"audio": clips[1].name, "text": "the dog sat on the mat", "language": "en"}]
    rows += [{"audio": clip.name} for clip in clips[2:]]
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["index", "--model", str(model_dir), "--audio", str(root / "manifest.jsonl"), "--output", str(root / "index")]) == 0
    return model_dir, root / "index", clips


def search(capsys, *arguments):
    code = main(["search", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("clip_number", [0, 3])
def test_query_by_example_finds_the_same_file_first(indexed, capsys, clip_number):
    _, index, clips = indexed
    code, out, _ = search(capsys, "--index", str(index), "--audio", str(clips[clip_number]), "-k", "3", "--json")
    assert code == 0
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(clips[clip_number]) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["duration"] == pytest.approx(0.5 + 0.4 * clip_number)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    if clip_number == 0:
        assert hits[0]["text"] == "le chat est sur la table" and hits[0]["language"] == "fr"
    else:
        assert "text" not in hits[0] and "language" not in hits[0]


def test_text_query_prints_a_table_of_every_file_when_k_is_large(indexed, capsys, monkeypatch):
    from search_clasp import ClaspEmbedder

    def refuse(*args, **kwargs):
        raise AssertionError("a text query loaded the audio backbones too")

    monkeypatch.setattr(ClaspEmbedder, "from_pretrained", refuse)
    _, index, clips = indexed
    code, out, err = search(capsys, "--index", str(index), "--query", "le chat", "-k", "50")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["rank", "score"]
    assert sum(str(clip) in out for clip in clips) == 5  # k larger than the index: every file, once
    assert "le chat est sur la table  [fr]" in out
    assert "query embedded in" in err


def test_another_model_is_refused(indexed, capsys, tmp_path):
    _, index, clips = indexed
    other = save_tiny_clasp(tmp_path / "other")
    code, _, err = search(capsys, "--index", str(index), "--query", "the cat", "--model", str(other))
    assert code == 2 and "clasp search: error: model mismatch" in err and str(other) in err
    code, _, err = search(capsys, "--index", str(tmp_path), "--query", "the cat")
    assert code == 2 and "not a CLASP index" in err
