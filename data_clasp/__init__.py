from .corpora import Sentence, language_counts, load_sentences
from .loaders import load_hf, load_manifest, load_speechbrown
from .schema import FEATURES, SAMPLING_RATE, SPLITS, translations_dict
from .synth import synthesize
from .features import build_feature_cache
from .asterisk import build_asterisk
