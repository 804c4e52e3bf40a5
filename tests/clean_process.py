"""Run a script as a user of a Hub folder would: in a clean Python process.

The process runs in another directory, without this repository on sys.path, with none of our
packages importable and HF_HUB_OFFLINE=1, so only the flat files of a saved folder can make
remote code work. Nothing registers our classes with the Auto* factories, which would hide a
broken export.
"""

import inspect
import json
import os
import site
import subprocess
import sys
import textwrap

# Run with -I -S: no site-packages processing, so no .pth file (an editable install of this
# repository is one) can put our packages on the path; the site-packages folders themselves come
# as the first argument.
PRELUDE = textwrap.dedent(
    """
    import json, sys
    sys.path.extend(json.loads(sys.argv.pop(1)))
    for name in ("configuration_clasp", "modeling_clasp", "processing_clasp", "clasp_cli"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable: the test would not prove the export")
    """
)

# argv: a folder, and a JSON file of {"clips": [[samples at 16 kHz]], "texts": [...]}. Prints the
# classes Auto* loaded, the model's logits and the zero-shot pipeline's ranking for clip 0.
LOAD_AND_SCORE = textwrap.dedent(
    """
    import numpy as np, torch
    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline
    folder, data = sys.argv[1], json.load(open(sys.argv[2]))
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    clips = [np.asarray(c, dtype=np.float32) for c in data["clips"]]
    inputs = processor(text=data["texts"], audio=clips, sampling_rate=16000)
    with torch.no_grad():
        logits = model(**inputs).logits_per_audio
    classifier = pipeline("zero-shot-audio-classification", model=folder, trust_remote_code=True)
    ranked = classifier(clips[0], candidate_labels=data["texts"], hypothesis_template="{}")
    print(json.dumps({
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "logits": logits.tolist(),
        "pipeline": ranked,
    }))
    """
)


def run_clean(tmp_path, script: str, *args, timeout=300) -> dict:
    """Runs PRELUDE + `script` with `args` (sys.argv[1:]) in a clean process; returns the JSON object
    it printed last (a line starting with "{"). HF_HOME is tmp_path/hf_home, shared by the calls
    of one test."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONSAFEPATH="1")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    path = elsewhere / f"script{len(list(elsewhere.iterdir()))}.py"
    path.write_text(PRELUDE + textwrap.dedent(script))
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(path), json.dumps(site.getsitepackages()), *map(str, args)],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "trust_remote_code" not in result.stdout + result.stderr  # nothing asked to be trusted twice
    json_lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert json_lines, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(json_lines[-1])


def write_inputs(path, clips, texts):
    """The JSON file LOAD_AND_SCORE reads."""
    path.write_text(json.dumps({"clips": [c.tolist() for c in clips], "texts": texts}))
    return path


class RecordingHub:
    """The Hub as a folder: HfApi.create_repo / create_branch / create_commit (what transformers'
    push_to_hub and `clasp export --push-to-hub` call) recorded instead of sent, each commit's
    files copied into `folder` as the repo would hold them. No network.

    Its source runs in clean processes too (RECORDING_HUB), so it needs only the standard library
    and huggingface_hub.
    """

    def __init__(self, folder):
        self.folder, self.calls = str(folder), []

    def patch(self, setattr):
        """Install it on HfApi; `setattr` is pytest's monkeypatch.setattr, or the builtin."""
        import os
        import shutil

        from huggingface_hub import HfApi, RepoUrl

        def create_repo(api, repo_id, **kwargs):
            self.calls.append({"call": "create_repo", "repo_id": repo_id, "private": kwargs.get("private")})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(api, repo_id, **kwargs):
            self.calls.append({"call": "create_branch", "repo_id": repo_id, "branch": kwargs.get("branch")})

        def create_commit(api, repo_id, operations, **kwargs):
            files = []
            for operation in operations:
                target = os.path.join(self.folder, operation.path_in_repo)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(operation.path_or_fileobj, target)
                files.append(operation.path_in_repo)
            self.calls.append({"call": "create_commit", "repo_id": repo_id, "revision": kwargs.get("revision"),
                               "files": sorted(files)})

        for function in (create_repo, create_branch, create_commit):
            setattr(HfApi, function.__name__, function)


RECORDING_HUB = inspect.getsource(RecordingHub)
