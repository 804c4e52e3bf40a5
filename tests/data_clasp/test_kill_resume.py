"""A real SIGKILL in the middle of `clasp data synth` and `clasp features`: the rerun resumes, ends with
what an uninterrupted run makes, and nothing half-written is ever there to be read.

The kill comes from inside the job, at a chosen point (no race with a timer): after K clips are
logged, while the dataset is being saved, or in the middle of a chunk of features. The whole
process group is killed, the synthesiser's worker processes with it.
"""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset, DatasetDict, load_from_disk

from clasp_cli.main import main
from data_clasp.features import MARKER
from tiny import REPO, save_tiny_clasp, tone

SYNTH = """
import dataclasses, json, os, signal, sys
import datasets
from data_clasp import synth
from data_clasp.corpora import Sentence

output, sentences, when = sys.argv[1], [Sentence(**s) for s in json.loads(sys.argv[2])], sys.argv[3]
kill = lambda *args, **kwargs: os.killpg(0, signal.SIGKILL)
if when == "save":  # half of the dataset written, then killed
    def save_half(dataset, path, **kwargs):
        dataset["train"].save_to_disk(os.path.join(path, "train"))
        kill()
    datasets.DatasetDict.save_to_disk = save_half
    stop_after = None
else:  # synthesize(stop_after=K) raises SynthesisStopped once K clips are on disk and logged: kill there instead
    synth.SynthesisStopped, stop_after = kill, int(when)
synth.synthesize(sentences, ["en", "fr", "de"], 4, output, seed=7, workers=2, stop_after=stop_after, progress_bar=False)
"""


def killed(script, *arguments):
    """Run `script` in a process group of its own, which it SIGKILLs."""
    result = subprocess.run([sys.executable, "-c", script, *map(str, arguments)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, start_new_session=True)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def synthesised(folder):
    """(manifest text, {clip: bytes}, {split: texts}) of a finished run."""
    dataset = load_from_disk(str(folder / "dataset"))
    clips = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted((folder / "clips").rglob("*")) if p.is_file()}
    return (folder / "manifest.jsonl").read_text(), clips, {name: split["text"] for name, split in dataset.items()}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_sigkill_during_synth_resumes_to_the_uninterrupted_result(sentences, tmp_path):
    from data_clasp.synth import synthesize

    synthesize(sentences, ["en", "fr", "de"], 4, tmp_path / "whole", seed=7, workers=1, progress_bar=False)
    rows = json.dumps([dataclasses.asdict(s) for s in sentences])
    resumed = tmp_path / "resumed"

    killed(SYNTH, resumed, rows, 5)  # mid-synthesis, two workers busy
    assert len((resumed / "progress.jsonl").read_text().splitlines()) >= 5
    assert not (resumed / "manifest.jsonl").exists() and not (resumed / "dataset").exists()

    killed(SYNTH, resumed, rows, "save")  # every clip made, the dataset half saved
    assert (resumed / "dataset.partial" / "train").is_dir()
    assert not (resumed / "dataset").exists()  # a reader finds no dataset, never half of one

    synthesize(sentences, ["en", "fr", "de"], 4, resumed, seed=7, workers=2, progress_bar=False)
    assert synthesised(resumed) == synthesised(tmp_path / "whole")
    assert not (resumed / "dataset.partial").exists()
    assert not [p for p in (resumed / "clips").rglob("*.tmp*")]


FEATURES = """
import os, signal, sys
from modeling_clasp import ClaspModel

kill_at, calls, original = int(sys.argv[1]), [], ClaspModel.get_speech_frames
def counted(self, *args, **kwargs):  # one call per model batch
    calls.append(1)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *args, **kwargs)
ClaspModel.get_speech_frames = counted
from clasp_cli.main import main
main(sys.argv[2:])
"""


def test_sigkill_during_features_resumes_to_the_uninterrupted_cache(tmp_path, monkeypatch):
    from modeling_clasp import ClaspModel

    torch.manual_seed(0)
    model = save_tiny_clasp(tmp_path / "model")
    paths = []
    for i in range(7):
        paths.append(str(tmp_path / f"clip{i}.wav"))
        soundfile.write(paths[-1], tone(0.3 + 0.1 * i, freq=150 + 40 * i, seed=i), 16000)
    rows = Dataset.from_dict({"audio": paths, "text": ["the cat sat", "le chat", "der hund", "el perro", "a red car",
                                                       "blue house", "green mat"], "language": ["en"] * 7})
    rows = rows.cast_column("audio", Audio(sampling_rate=16000))
    DatasetDict({"train": rows.select(range(5)), "validation": rows.select(range(5, 7))}).save_to_disk(tmp_path / "data")

    def arguments(output):
        return ["features", "--model", str(model), "--data", str(tmp_path / "data"), "--output", str(output),
                "--batch-size", "2", "--chunk-size", "2"]

    # Four chunks of at most 2 rows (train 2+2+1, validation 2), one model batch each: killed in the third.
    killed(FEATURES, 3, *arguments(tmp_path / "resumed"))
    assert not (tmp_path / "resumed" / MARKER).exists() and not (tmp_path / "resumed" / "dataset_dict.json").exists()
    assert len(list((tmp_path / "resumed" / "chunks").glob("*.arrow"))) == 2  # the chunk in flight never got its name

    calls, original = [], ClaspModel.get_speech_frames
    monkeypatch.setattr(ClaspModel, "get_speech_frames", lambda *a, **k: calls.append(1) or original(*a, **k))
    assert main(arguments(tmp_path / "resumed")) == 0
    assert len(calls) == 2  # only the two unfinished chunks
    assert main(arguments(tmp_path / "whole")) == 0
    resumed, whole = load_from_disk(str(tmp_path / "resumed")), load_from_disk(str(tmp_path / "whole"))
    for split in ("train", "validation"):
        assert resumed[split]["text"] == whole[split]["text"]
        for column in ("speech_embeds", "spectrogram_embeds", "text_embeds"):
            np.testing.assert_allclose(np.array(resumed[split][column]), np.array(whole[split][column]), atol=1e-6)
