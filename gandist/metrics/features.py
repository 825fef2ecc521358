"""Feature networks for the metrics: Inception-v3 (standard FID protocol) or any network given by path.

`metrics.feature_net` takes one of:

- `inception`: the TorchScript translation of the TensorFlow Inception-v3 graph of 2015-12-05
  that NVlabs publish for FID/KID/precision-recall (StyleGAN2-ADA, StyleGAN3, clean-fid use it),
  read from the torch hub cache (`<torch hub dir>/checkpoints/inception-2015-12-05.pt`);
  `inception:/path/to/inception-2015-12-05.pt` reads it from that path. Images go in as uint8
  RGB (grey is repeated to 3 channels) at their own size; the network resizes to 299 px itself
  and returns the 2048 pool features. Nothing is downloaded: a missing file is an error that
  says where to put it.
- `/path/to/net.pt2`: an exported program (`torch.export.save`, batch dimension dynamic) or
  `/path/to/net.pt`: a TorchScript module (`torch.jit.save`), called on float images in
  [-1, 1], N x C x H x W at the dataset's resolution, returning N x D features.
- `package.module:factory@/path/to/weights.pt`: `factory()` builds an nn.Module whose forward
  returns features; the state dict at the path is loaded into it.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
from pathlib import Path

import torch
from torch import nn

from gandist.config import ConfigError
from gandist.loading import load_exported, load_plain

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels real images have, staying in [-1, 1] floats."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


class FeatureNetError(ConfigError):
    """A feature network that cannot be found or loaded (a bad metrics.feature_net), with what would fix it."""


def file_digest(path: Path) -> str:
    """First 16 hex digits of the SHA-256 of a file (identifies the network in cache names)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def default_inception_path() -> Path:
    """Where `inception` is looked for: the torch hub cache (TORCH_HOME moves it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class FeatureNet:
    """A frozen feature network called on float images in [-1, 1]; `name` and `identity` label its features."""

    def __init__(self, module: nn.Module, name: str, identity: str, uint8_rgb: bool = False):
        self.module = module if isinstance(module, torch.fx.GraphModule) else module.eval()
        self.name, self.identity, self.uint8_rgb = name, identity, uint8_rgb

    def to(self, device: torch.device | str) -> FeatureNet:
        """Move the network to a device (returns self)."""
        self.module = self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """N x C x H x W floats in [-1, 1] -> N x D float32 features."""
        if self.uint8_rgb:
            images = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            if images.shape[1] == 1:
                images = images.repeat(1, 3, 1, 1)
            features = self.module(images, return_features=True)
        else:
            features = self.module(images)
        return features.float().flatten(1)


def _load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():  # TorchScript is deprecated, but NVlabs' Inception is one
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def _inception(path: Path) -> FeatureNet:
    if not path.is_file():
        raise FeatureNetError(
            f"metrics.feature_net: the FID Inception-v3 weights are not at {path}. Nothing is downloaded here: "
            f"on a machine with network fetch {INCEPTION_URL} and copy it to {path} (the torch hub cache; "
            f"TORCH_HOME moves it), or set metrics.feature_net=inception:/path/to/{INCEPTION_FILE}; "
            "or measure in another feature space: metrics.feature_net=/path/to/net.pt2 (torch.export) "
            "or a TorchScript file"
        )
    try:
        module = _load_torchscript(path)
    except Exception as e:
        raise FeatureNetError(f"metrics.feature_net: {path} is not a loadable TorchScript Inception ({e})") from None
    return FeatureNet(module, "inception", f"inception-{file_digest(path)}", uint8_rgb=True)


def _from_state_dict(spec: str) -> FeatureNet:
    target, weights = spec.split("@", 1)
    module_name, _, factory_name = target.partition(":")
    path = Path(weights)
    if not path.is_file():
        raise FeatureNetError(f"metrics.feature_net={spec!r}: weights file {path} does not exist")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as e:
        raise FeatureNetError(
            f"metrics.feature_net={spec!r}: cannot import {factory_name!r} from {module_name!r} ({e}); "
            "the form is package.module:factory@/path/to/weights.pt"
        ) from None
    module = factory()
    module.load_state_dict(load_plain(path))
    return FeatureNet(module, path.stem, f"{target}-{file_digest(path)}")


def load_feature_net(spec: str, device: torch.device | str = "cpu") -> FeatureNet:
    """The feature network named by a `metrics.feature_net` value, on `device`."""
    if spec == "inception" or spec.startswith("inception:"):
        path = Path(spec.split(":", 1)[1]) if ":" in spec else default_inception_path()
        return _inception(path).to(device)
    if "@" in spec and ":" in spec.split("@", 1)[0]:
        return _from_state_dict(spec).to(device)
    path = Path(spec)
    if not path.is_file():
        raise FeatureNetError(
            f"metrics.feature_net={spec!r}: no such file. Use 'inception', a .pt2 or TorchScript file, "
            "or package.module:factory@/path/to/weights.pt"
        )
    try:
        module = load_exported(path).module() if path.suffix == ".pt2" else _load_torchscript(path)
    except Exception as e:
        kind = "an exported program (torch.export.save)" if path.suffix == ".pt2" else "a TorchScript file"
        raise FeatureNetError(
            f"metrics.feature_net={spec!r} is not {kind} ({e}); for a state dict use "
            "package.module:factory@/path/to/weights.pt"
        ) from None
    return FeatureNet(module, path.stem, f"{path.stem}-{file_digest(path)}").to(device)
