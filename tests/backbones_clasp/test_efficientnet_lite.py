import pytest
import skimage.data
import torch
from efficientnet_lite_pytorch import EfficientNet
from transformers import AutoImageProcessor, EfficientNetForImageClassification, EfficientNetModel

from backbones_clasp.efficientnet_lite import LITE0_PTH, SE_GATE_BIAS


@pytest.fixture(scope="module")
def classifier(backbones):
    return EfficientNetForImageClassification.from_pretrained(backbones["efficientnet-lite0"]).eval()


def test_squeeze_excite_gate_is_exactly_one():
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert torch.sigmoid(torch.tensor(SE_GATE_BIAS, dtype=dtype)).item() == 1.0


def test_logits_match_the_reference_implementation(classifier):
    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(LITE0_PTH.locate(), map_location="cpu", weights_only=True))
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixels).logits, reference.eval()(pixels), atol=1e-4, rtol=1e-4)


def test_pooled_features_load_as_efficientnet_model(backbones):
    model = EfficientNetModel.from_pretrained(backbones["efficientnet-lite0"]).eval()
    with torch.no_grad():
        pooled = model(torch.randn(1, 3, 224, 224)).pooler_output
    assert pooled.shape == (1, 1280)
    identity_se = sum(p.numel() for name, p in model.named_parameters() if ".squeeze_excite." in name)
    assert sum(p.numel() for p in model.parameters()) - identity_se == 4_652_008 - 1_281_000  # Lite0 minus its fc


@pytest.mark.parametrize(
    "photo, classes",
    [
        ("chelsea", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_classifies_a_photo(backbones, classifier, photo, classes):
    processor = AutoImageProcessor.from_pretrained(backbones["efficientnet-lite0"])
    pixels = processor(images=getattr(skimage.data, photo)(), return_tensors="pt").pixel_values
    with torch.no_grad():
        assert classifier(pixels).logits.argmax(-1).item() in classes
