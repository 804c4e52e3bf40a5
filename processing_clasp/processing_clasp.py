"""ClaspProcessor: the feature extractor for audio and the sentence encoder's tokenizer for text.

`processor(text=..., audio=..., sampling_rate=...)` returns everything `ClaspModel` takes:
`input_ids`/`attention_mask` for text; for audio the speech encoder's `input_values` (waveform) or
`input_features` (Whisper's log-mel), its mask `input_values_mask` / `input_features_mask` (not
`attention_mask`: that is the tokenizer's), and the spectrogram picture `pixel_values`.
Texts get the sentence encoder's prompt (e5 expects "query: "), so the model sees text exactly as
the sentence encoder was trained to.

This file is also published flat on the Hub: it imports only transformers and the standard library.
"""

import inspect
import json
import warnings

from transformers import AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.utils import cached_file

from configuration_clasp.configuration_clasp import ClaspConfig, save_with_code
from processing_clasp.feature_extraction_clasp import ClaspFeatureExtractor

# Which files `from_pretrained` reads (as transformers' `cached_file` takes them).
HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download", "proxies")


class ClaspProcessor(ProcessorMixin):
    r"""
    Args:
        feature_extractor ([`ClaspFeatureExtractor`]): audio → model inputs.
        tokenizer: the sentence encoder's tokenizer.
        text_prefix (`str`): prepended to every text (the sentence encoder's prompt; "" for LaBSE).
        text_max_length (`int`): longer texts are truncated to this many tokens.
    """

    def __init__(self, feature_extractor, tokenizer, text_prefix="", text_max_length=512):
        if not isinstance(text_prefix, str):
            raise TypeError(f"text_prefix must be a string, got {type(text_prefix).__name__}")
        if isinstance(text_max_length, bool) or not isinstance(text_max_length, int) or text_max_length < 1:
            raise ValueError(f"text_max_length must be a positive number of tokens, got {text_max_length!r}")
        self.text_prefix = text_prefix
        self.text_max_length = text_max_length
        self.auto_map = {"AutoProcessor": "processing_clasp.ClaspProcessor"}  # for AutoProcessor on a saved folder
        super().__init__(feature_extractor, tokenizer)

    def __call__(self, text=None, audio=None, sampling_rate=None, return_tensors="pt", **tokenizer_kwargs) -> BatchFeature:
        if text is None and audio is None:
            raise ValueError("ClaspProcessor needs `text`, `audio`, or both.")
        # The tokenizer would ignore an argument it does not know; so would the processor, silently.
        accepted = inspect.signature(type(self.tokenizer).__call__).parameters
        unknown = sorted(k for k in tokenizer_kwargs if k not in accepted)
        if unknown:
            raise TypeError(f"ClaspProcessor got unexpected keyword argument(s) {unknown}: its extra arguments go to the "
                            "tokenizer; audio settings (padding, truncation, max_length) go to processor.feature_extractor")
        outputs = {}
        if text is not None:
            outputs.update(self.tokenize(text, return_tensors=return_tensors, **tokenizer_kwargs))
        if audio is not None:
            outputs.update(self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors))
        return BatchFeature(outputs)

    def tokenize(self, text, return_tensors="pt", **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"text[{i}]: expected a string, got {type(t).__name__}")
        kwargs = {"padding": True, "truncation": True, "max_length": self.text_max_length, **kwargs}
        texts = [self.text_prefix + t for t in texts]
        tokens = self.tokenizer(texts, return_tensors=return_tensors, **kwargs)
        # Say which texts lost their end: the sentence encoder only ever sees max_length tokens. Only a
        # text that fills the limit can have been cut; tokenizing it alone tells.
        for i, mask in enumerate(tokens.get("attention_mask", []) if kwargs["truncation"] and kwargs["max_length"] else []):
            if int(sum(mask)) >= kwargs["max_length"]:
                full = len(self.tokenizer(texts[i], truncation=False)["input_ids"])
                if full > kwargs["max_length"]:
                    warnings.warn(f"text[{i}]: {full} tokens, truncated to the sentence encoder's limit of "
                                  f"{kwargs['max_length']}; the rest is not embedded", stacklevel=2)
        return tokens

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.feature_extractor.model_input_names))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Our processor from a saved folder or Hub repo.

        Keyword arguments override the saved settings, as in transformers: `text_prefix`,
        `text_max_length`, and any of the feature extractor's settings (`do_normalize`,
        `max_samples`, ...); the Hub arguments (`revision`, `token`, `cache_dir`, ...) choose the
        files. Any other keyword raises a ValueError naming it.

        transformers would load the feature extractor through AutoFeatureExtractor, which asks
        for trust_remote_code even when this very class is already imported; read it directly.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        trust_remote_code = kwargs.pop("trust_remote_code", None)
        for name in ("code_revision", "_from_auto", "_from_pipeline"):  # what AutoProcessor and pipeline add
            kwargs.pop(name, None)
        with open(cached_file(pretrained_model_name_or_path, "processor_config.json", **hub_kwargs), encoding="utf-8") as f:
            saved = json.load(f)
        saved["feature_extractor"].setdefault("whisper_padding", "real")  # folders saved before it existed
        feature_extractor, kwargs = ClaspFeatureExtractor.from_dict(saved["feature_extractor"], return_unused_kwargs=True, **kwargs)
        settings = {"text_prefix": saved.get("text_prefix", ""), "text_max_length": saved.get("text_max_length", 512)}
        settings.update({k: kwargs.pop(k) for k in settings if k in kwargs})
        if kwargs:
            raise ValueError(
                f"ClaspProcessor.from_pretrained got unknown keyword arguments {sorted(kwargs)}; it takes text_prefix, "
                f"text_max_length, the feature extractor's settings {sorted(saved['feature_extractor'])} "
                f"and the Hub arguments {list(HUB_KWARGS)}"
            )
        # The tokenizer is the text encoder's: hand AutoTokenizer that config, or it would load the
        # folder's config.json through AutoConfig and ask to trust our code a second time.
        config_file = cached_file(pretrained_model_name_or_path, "config.json", _raise_exceptions_for_missing_entries=False,
                                  **hub_kwargs)
        text_config = ClaspConfig.from_json_file(config_file).text_config if config_file else None
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, config=text_config,
                                                  trust_remote_code=trust_remote_code, **hub_kwargs)
        return cls(feature_extractor, tokenizer, **settings)

    def save_pretrained(self, save_directory, push_to_hub=False, **kwargs):
        # The code that `auto_map` names goes with every save, which is written whole or not at all.
        return save_with_code(self, super().save_pretrained, save_directory, push_to_hub, kwargs)

__all__ = ["ClaspProcessor"]
