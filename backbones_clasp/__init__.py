from .build import build_backbones, default_backbones_dir
from .builder import BACKBONE_PRESETS, build_clasp, read_sentence_transformer, resolve_backbones
from .checkpoints import check_checkpoint, load_model_and_processor
from .efficientnet_lite import convert_efficientnet_lite0
from .multilingual_e5 import convert_multilingual_e5_small
from .package_data import PackageDataError, PackageFile
from .whisper_ct2 import convert_whisper_base, read_ct2_model

__all__ = [
    "build_backbones",
    "default_backbones_dir",
    "BACKBONE_PRESETS",
    "build_clasp",
    "read_sentence_transformer",
    "resolve_backbones",
    "check_checkpoint",
    "load_model_and_processor",
    "convert_efficientnet_lite0",
    "convert_multilingual_e5_small",
    "convert_whisper_base",
    "read_ct2_model",
    "PackageDataError",
    "PackageFile",
]
