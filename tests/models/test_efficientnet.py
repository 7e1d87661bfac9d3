"""EfficientNet-Lite0: the packaged ImageNet weights are real, load offline and unchanged."""

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from pdml_ray.data.transforms import to_model_input
from pdml_ray.models import build_model, embed_channels
from pdml_ray.models.efficientnet import (LITE0_SHA256, _verified_state_dict,
                                          imagenet_classifier, packaged_weights_path)

# ImageNet class ids: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso.
CATS = {281, 282, 285}
ESPRESSO = 967


def lite0_input(photo: np.ndarray) -> torch.Tensor:
    """A photo as the released classifier was trained on it: 224 x 224, RGB in [-1, 1]."""
    resized = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR))
    return torch.from_numpy(resized.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def classifier():
    return imagenet_classifier()


def test_packaged_weights_name_two_real_photos(classifier):
    with torch.no_grad():
        cat = classifier(lite0_input(skimage_data.chelsea())).softmax(-1)[0]
        coffee = classifier(lite0_input(skimage_data.coffee())).softmax(-1)[0]
    assert int(cat.argmax()) in CATS and float(cat[list(CATS)].sum()) > 0.5
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.5


def test_segmentation_backbone_holds_the_files_weights_unchanged():
    raw = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = build_model(num_classes=5, backbone="efficientnet_lite0", pretrained="imagenet")
    body = model.backbone.body.state_dict()
    # The file's tensors in order; the backbone is the first len(body) of them (stem and
    # blocks come before conv_head and the classifier in both orders).
    raw_tensors = list(raw.values())[:len(body)]
    assert len(body) == 288
    for (key, tensor), expected in zip(body.items(), raw_tensors):
        assert torch.equal(tensor, expected), key


def test_backbone_alone_gives_the_classifiers_features(classifier):
    """Through the input adapter, the backbone's stem (which no dilation touches) sees a
    photo exactly as the released classifier's stem does."""
    model = build_model(num_classes=5, backbone="efficientnet_lite0", pretrained="imagenet")
    photo = skimage_data.chelsea()[:96, :96]
    with torch.no_grad():
        ours = model.backbone.body.conv_stem(model.backbone.adapt(to_model_input(photo)[None]))
        theirs = classifier.conv_stem(torch.from_numpy(photo.astype(np.float32) / 127.5 - 1)
                                      .permute(2, 0, 1)[None])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_a_changed_file_is_refused(tmp_path):
    copy = tmp_path / "lite0.pth"
    shutil.copy(packaged_weights_path(), copy)
    with open(copy, "r+b") as handle:  # flip one byte in the middle of the file
        handle.seek(copy.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="sha256"):
        _verified_state_dict(copy, LITE0_SHA256)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(96, 96), (97, 61)])
def test_feature_map_is_the_input_over_the_output_stride(output_stride, size):
    model = build_model(num_classes=7, backbone="efficientnet_lite0",
                        output_stride=output_stride, projection_dim=16)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    h, w = (math.ceil(s / output_stride) for s in size)
    assert out["out"].shape == (1, 7, *size)
    assert out["embed"].shape == (1, 16, h, w)
    features = model.backbone(torch.randn(1, 3, *size))["out"]
    assert features.shape == (1, embed_channels("efficientnet_lite0"), h, w)


def test_input_adapter_maps_imagenet_normalised_input_to_minus_one_one():
    photo = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    model = build_model(num_classes=3, backbone="efficientnet_lite0")
    adapted = model.backbone.adapt(to_model_input(photo)[None])[0]
    expected = torch.from_numpy(photo.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    torch.testing.assert_close(adapted, expected, atol=1e-5, rtol=0)


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_model(num_classes=3, backbone="efficientnet_lite0",
                    pretrained=str(tmp_path / "nope.pt"))
