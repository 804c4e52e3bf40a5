"""CSLS hubness correction: the penalty by hand, a constructed hub, degenerate inputs, the CLI option."""

import json

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import save_file

from clasp_cli.main import main
from evaluation.hubness import choose_csls_k, csls_penalty, load_hubness_bank, save_hubness_bank
from evaluation.protocols import retrieval_report


def test_penalty_by_hand():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    candidates = np.array([[1.0, 0.0], [0.8, 0.6]])
    # cosines to the bank: c1 [1, 0, 0.6], c2 [0.8, 0.6, 0.96]; r = mean of the k largest.
    assert csls_penalty(candidates, bank, 1) == pytest.approx([1.0, 0.96])
    assert csls_penalty(candidates, bank, 2) == pytest.approx([0.8, 0.88])
    assert csls_penalty(torch.tensor(candidates), torch.tensor(bank), 3) == pytest.approx([1.6 / 3, 2.36 / 3])


def hub_collection(num_pairs=5, bank_rows=4):
    """Pairs where audio 0 (the hub, direction u) is nearer every text query than its own audio.

    Orthonormal directions: u, e_i and f_i per pair, and fresh ones for the banks. text_i =
    0.6 u + 0.8 e_i, audio_i = 0.6 e_i + 0.8 f_i (i >= 1), text_0 = audio_0 = u. Text query i
    scores its audio 0.48 and the hub 0.6. The training-text bank rows 0.6 u + 0.8 e'_m put the
    hub's r at 0.6 and every other audio's at 0, so CSLS gives the gold 2 * 0.48 = 0.96 against
    the hub's 2 * 0.6 - 0.6 = 0.6.
    """
    dim = 1 + 2 * num_pairs + 2 * bank_rows
    eye = np.eye(dim, dtype=np.float32)
    u, e, f = eye[0], eye[1 : 1 + num_pairs], eye[1 + num_pairs : 1 + 2 * num_pairs]
    text = 0.6 * u + 0.8 * e
    audio = 0.6 * e + 0.8 * f
    text[0] = audio[0] = u
    fresh = eye[1 + 2 * num_pairs :]
    bank = {"text_embeds": 0.6 * u + 0.8 * fresh[:bank_rows], "audio_embeds": fresh[bank_rows:]}
    return audio, text, bank


def test_a_hub_wins_without_correction_and_loses_with_it():
    audio, text, bank = hub_collection()
    plain = retrieval_report(audio, text, soft_k=2)
    corrected = retrieval_report(audio, text, soft_k=2, hubness="csls", hubness_bank=bank, csls_k=2)
    assert plain["text_to_audio"]["hits@1"] == pytest.approx(1 / 5)  # only the hub's own text finds it first
    assert corrected["text_to_audio"]["hits@1"] == 1.0
    assert plain["hubness"] == {"method": "none", "k": None, "bank_rows": 0}
    assert corrected["hubness"] == {"method": "csls", "k": 2, "bank_rows": 4}


def test_k_is_chosen_by_validation_mean_mrr_among_the_ks_the_bank_allows():
    """Every k up to the bank's 4 rows gives the hub r = 0.6 and the others 0, so the figures tie and
    the k listed first wins; k = 50 exceeds the bank and is left out."""
    audio, text, bank = hub_collection()
    k, figures = choose_csls_k(audio, text, bank, ks=(50, 3, 1))
    assert k == 3 and list(figures) == [None, 3, 1]
    assert figures[None]["text_to_audio"]["hits@1"] == pytest.approx(1 / 5) and figures[3]["text_to_audio"]["hits@1"] == 1.0
    assert figures[3]["mean_mrr"] == pytest.approx((figures[3]["audio_to_text"]["mrr"] + 1.0) / 2)
    with pytest.raises(ValueError, match=r"no csls k of \[5, 10\] lies in \[1, 4\]"):
        choose_csls_k(audio, text, bank, ks=(5, 10))


def test_model_card_entries_name_the_correction():
    from evaluation.report import model_index_results

    audio, text, bank = hub_collection()
    plain = model_index_results(retrieval_report(audio, text, soft_k=2), "pairs")
    corrected = model_index_results(retrieval_report(audio, text, soft_k=2, hubness="csls", hubness_bank=bank,
                                                     csls_k=2), "pairs")
    assert "hubness" not in plain[0].metric_args and corrected[0].metric_args["hubness"] == "csls k=2"


def test_constant_candidates_score_chance():
    """Every candidate alike: alike penalties, so CSLS ties them all and the gold gets 1/N."""
    audio, text, bank = hub_collection()
    report = retrieval_report(np.ones_like(audio), text, soft_k=2, hubness="csls", hubness_bank=bank, csls_k=1)
    assert report["text_to_audio"]["hits@1"] == pytest.approx(1 / 5)


def test_bad_input_is_refused():
    audio, text, bank = hub_collection()
    broken = bank["text_embeds"].copy()
    broken[2] = np.nan
    with pytest.raises(ValueError, match=r"hubness bank rows \[2\]: NaN"):
        csls_penalty(audio, broken, 1)
    with pytest.raises(ValueError, match=r"csls k must lie in \[1, 4\]"):
        csls_penalty(audio, bank["text_embeds"], 5)
    with pytest.raises(ValueError, match=r"must be \[N, D\] and \[B, D\]"):
        csls_penalty(audio, bank["text_embeds"][:, :3], 1)
    with pytest.raises(ValueError, match="needs a hubness_bank"):
        retrieval_report(audio, text, hubness="csls")
    with pytest.raises(ValueError, match="hubness must be one of"):
        retrieval_report(audio, text, hubness="dual-softmax", hubness_bank=bank)


def test_bank_file_round_trip(tmp_path):
    audio, text, bank = hub_collection()
    path = tmp_path / "bank.safetensors"
    save_hubness_bank(path, bank["audio_embeds"], bank["text_embeds"], csls_k=3, source="unit test")
    loaded, k = load_hubness_bank(path)
    assert k == 3 and [p.name for p in tmp_path.iterdir()] == ["bank.safetensors"]
    np.testing.assert_allclose(loaded["text_embeds"], bank["text_embeds"], atol=1e-3)  # float16 on disk


def save_collection(tmp_path):
    audio, text, bank = hub_collection()
    pairs, bank_path = tmp_path / "pairs.safetensors", tmp_path / "bank.safetensors"
    save_file({"audio_embeds": torch.from_numpy(audio), "text_embeds": torch.from_numpy(text)}, str(pairs))
    save_file({name: torch.from_numpy(embeds) for name, embeds in bank.items()}, str(bank_path),
              metadata={"csls_k": "3"})
    return pairs, bank_path


def test_eval_option_is_recorded(tmp_path, capsys):
    pairs, bank = save_collection(tmp_path)
    reports = {}
    for name, options in {"off": [], "bank-k": ["--hubness", "csls", "--hubness-bank", str(bank)],
                          "k=1": ["--hubness", "csls", "--hubness-bank", str(bank), "--csls-k", "1"]}.items():
        output, markdown = tmp_path / f"{name}.json", tmp_path / f"{name}.md"
        assert main(["eval", "--embeddings", str(pairs), "--output", str(output), "--markdown", str(markdown),
                     *options]) == 0
        reports[name] = json.loads(output.read_text())
        reports[name]["markdown"], reports[name]["stdout"] = markdown.read_text(), capsys.readouterr().out
    assert reports["off"]["hubness"]["method"] == "none" and "hubness:" not in reports["off"]["markdown"]
    assert reports["off"]["text_to_audio"]["hits@1"] == pytest.approx(1 / 5)
    assert reports["bank-k"]["hubness"] == {"method": "csls", "k": 3, "bank_rows": 4}  # the bank's own k
    assert reports["k=1"]["hubness"]["k"] == 1
    assert reports["bank-k"]["text_to_audio"]["hits@1"] == 1.0
    assert "hubness: csls k=3" in reports["bank-k"]["markdown"] and "hubness: csls k=3" in reports["bank-k"]["stdout"]


@pytest.mark.parametrize("options, message", [
    (["--csls-k", "9"], "--csls-k 9: must lie in [1, 4]"),
    (["--hubness-bank", "missing.safetensors"], "no such hubness bank file"),
])
def test_eval_bad_bank_exits_2(tmp_path, capsys, options, message):
    pairs, bank = save_collection(tmp_path)
    argv = ["eval", "--embeddings", str(pairs), "--output", str(tmp_path / "r.json"), "--hubness", "csls",
            "--hubness-bank", str(bank), *options]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("shapes, header, message", [
    ({"audio_embeds": (6, 4), "text_embeds": (5, 4)}, {}, r"audio_embeds \(6, 4\) and text_embeds \(5, 4\)"),
    ({"audio_embeds": (6, 4), "text_embeds": (6, 3)}, {}, r"audio_embeds \(6, 4\) and text_embeds \(6, 3\)"),
    ({"audio_embeds": (6, 4), "text_embeds": (6, 4)}, {"csls_k": "five"}, "csls_k 'five' in its header"),
    ({"audio_embeds": (6, 4), "text_embeds": (6, 4)}, {"csls_k": "0"}, "csls_k '0' in its header"),
    ({"audio_embeds": (6, 4), "text_embeds": (6, 4)}, {"csls_k": "7"}, "csls_k '7' in its header"),
])
def test_a_bank_file_that_cannot_serve_is_refused_naming_it(tmp_path, shapes, header, message):
    path = tmp_path / "odd_bank.safetensors"
    save_file({name: torch.nn.functional.normalize(torch.randn(shape), dim=-1) for name, shape in shapes.items()},
              str(path), metadata=header)
    with pytest.raises(ValueError, match=message) as error:
        load_hubness_bank(path)
    assert str(path) in str(error.value)


def test_eval_names_a_bank_of_another_dimension_before_embedding(tmp_path, capsys, monkeypatch):
    """The bank must be in the evaluated embeddings' space: with --embeddings and with --model, the
    error names the bank file (not the pairs), and --model refuses it before embedding a clip."""
    from tiny import save_tiny_clasp, tone

    pairs, _ = save_collection(tmp_path)  # 19-d embeddings
    bank = tmp_path / "bank_5d.safetensors"
    save_hubness_bank(bank, *torch.nn.functional.normalize(torch.randn(2, 6, 5), dim=-1), csls_k=2)
    assert main(["eval", "--embeddings", str(pairs), "--output", str(tmp_path / "r.json"), "--hubness", "csls",
                 "--hubness-bank", str(bank)]) == 2
    assert f"{bank}: the hubness bank's rows have 5 dimensions, the embeddings 19" in capsys.readouterr().err
    model_dir = save_tiny_clasp(tmp_path / "model")
    monkeypatch.setattr("evaluation.model_report.model_report", lambda *a, **k: pytest.fail("embedded before refusing"))
    soundfile.write(tmp_path / "0.wav", tone(0.3), 16000)
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text(json.dumps({"audio": "0.wav", "text": "the cat sat", "language": "en"}) + "\n")
    assert main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--output", str(tmp_path / "r.json"),
                 "--hubness", "csls", "--hubness-bank", str(bank)]) == 2
    assert f"{bank}: the hubness bank's rows have 5 dimensions, the embeddings" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["--hubness", "csls"], ["--csls-k", "3"], ["--hubness", "dual"], ["--also-csls"]])
def test_eval_option_mistakes_exit_2(tmp_path, options):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--embeddings", "e.safetensors", "--output", str(tmp_path / "r.json"), *options])
    assert exit_info.value.code == 2


def test_a_bank_beside_the_model_is_no_weight_and_is_exported(tmp_path):
    """hubness_bank.safetensors in a model folder: loading, checking and identity ignore it, `clasp
    eval --hubness csls` takes it by default, and `clasp export` copies it into the Hub folder."""
    from clasp_cli.export_command import export
    from backbones_clasp.checkpoints import check_checkpoint
    from modeling_clasp import ClaspModel
    from search_clasp import model_identity
    from search_clasp.search import load_text_model
    from tiny import save_tiny_clasp, tone

    model_dir = save_tiny_clasp(tmp_path / "model")
    identity = model_identity(model_dir)
    dim = ClaspModel.from_pretrained(model_dir).config.projection_dim
    bank = torch.nn.functional.normalize(torch.randn(2, 6, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    save_hubness_bank(model_dir / "hubness_bank.safetensors", *bank, csls_k=2)
    assert model_identity(model_dir) == identity
    check_checkpoint(model_dir)
    load_text_model(model_dir)
    manifest = tmp_path / "pairs.jsonl"
    for i, text in enumerate(["the cat sat", "red house", "el perro"]):
        soundfile.write(tmp_path / f"{i}.wav", tone(0.3 + 0.1 * i, freq=150 + 40 * i, seed=i), 16000)
        with open(manifest, "a") as f:
            f.write(json.dumps({"audio": f"{i}.wav", "text": text, "language": "en"}) + "\n")
    assert main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--output", str(tmp_path / "r.json"),
                 "--hubness", "csls"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["hubness"] == {"method": "csls", "k": 2, "bank_rows": 6}
    hub = export(model_dir, tmp_path / "hub")
    assert load_hubness_bank(f"{hub}/hubness_bank.safetensors")[1] == 2
    ClaspModel.from_pretrained(hub)
