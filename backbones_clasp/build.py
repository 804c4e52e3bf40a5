"""Build every offline backbone folder once, atomically.

Each folder is converted into a temporary directory next to its target and renamed into place,
so a folder that exists is complete: an interrupted or failed build leaves nothing that a later
call would mistake for a finished one, and a second call only looks at the folder names.
"""

import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from .efficientnet_lite import convert_efficientnet_lite0
from .multilingual_e5 import convert_multilingual_e5_small
from .whisper_ct2 import convert_whisper_base

CONVERTERS = {
    "whisper-base": convert_whisper_base,
    "multilingual-e5-small": convert_multilingual_e5_small,
    "efficientnet-lite0": convert_efficientnet_lite0,
}


def default_backbones_dir() -> Path:
    return Path(os.environ.get("CLASP_BACKBONES_DIR") or Path.home() / ".cache" / "clasp" / "backbones")


def build_backbones(output_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Convert the pretrained weights shipped in pip packages into transformers folders.

    Returns {name: folder} for whisper-base, multilingual-e5-small and efficientnet-lite0 under
    `output_dir` (default: $CLASP_BACKBONES_DIR, else ~/.cache/clasp/backbones).
    """
    root = Path(output_dir) if output_dir is not None else default_backbones_dir()
    root.mkdir(parents=True, exist_ok=True)
    folders = {name: root / name for name in CONVERTERS}
    missing = [name for name, folder in folders.items() if not folder.is_dir()]
    for name in tqdm(missing, desc="Converting backbones", unit="model", disable=not missing):
        tqdm.write(f"converting {name} -> {folders[name]}")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            CONVERTERS[name](staging)
            os.rename(staging, folders[name])
        except OSError:
            if not folders[name].is_dir():  # a concurrent build renamed its copy first: keep theirs
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folders
