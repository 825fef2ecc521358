"""A trained generator ready for inference: found in a run, a checkpoint folder or a state.pt, and loaded.

    run folder | checkpoint folder | state.pt   --find_checkpoint-->  checkpoints/step-N/ (COMPLETE)
        --load_trained-->  G_ema (or G) in eval mode + its config     (reads state.pt [+ ZeRO-3 partitions])

`state.pt` is read (full "G", "G_ema" and "config"), which every checkpoint holds, DeepSpeed ones
included; a ZeRO-3 checkpoint keeps the weights partitioned, one file per rank, and they are
assembled here one parameter at a time (training/checkpoint.py: net_state). BatchNorm generators are
run in eval mode (running statistics), as the trainer's sample grids are, so an image depends on its
own z only and not on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gandist.config import Config, ConfigError, from_dict
from gandist.models import build_generator
from gandist.training.checkpoint import STATE_FILE, find_checkpoint, load_checkpoint, net_state

NETS = ("G_ema", "G")


class SamplingError(ValueError):
    """Bad input to sample / interpolate / generate / export, naming the path, option or value."""


def prepare_for_inference(G: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Move G to a device, switch BatchNorm to its running statistics (eval) and turn off gradients."""
    G = G.to(device).eval()
    G.requires_grad_(False)
    return G


@dataclass
class TrainedGenerator:
    """A generator ready for inference, with what is known about it."""

    G: nn.Module
    """The network, in eval mode, on its device."""
    cfg: Config
    """The run's config (its model section describes G)."""
    checkpoint: Path | None = None
    """The checkpoint folder it came from."""
    net: str = "G_ema"
    """Which weights: G_ema (averaged) or G."""
    nimg: int | None = None
    """Images shown to D when the checkpoint was written."""

    @property
    def z_dim(self) -> int:
        return self.cfg.model.z_dim

    @property
    def num_classes(self) -> int:
        """Number of classes G is conditioned on; 0 for an unconditional model."""
        return self.cfg.model.num_classes

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device


def load_trained(path: str | Path, net: str = "G_ema", device: str | torch.device = "cpu") -> TrainedGenerator:
    """Load G_ema (or G) from a run folder, a checkpoint folder or a state.pt, ready for inference."""
    if net not in NETS:
        raise SamplingError(f"net {net!r} is not one of {', '.join(NETS)}")
    ckpt = find_checkpoint(path)
    state, _ = load_checkpoint(ckpt, rank=None)
    if "config" not in state:
        raise SamplingError(f"{ckpt / STATE_FILE} has no config (keys: {', '.join(sorted(state))})")
    try:
        cfg = from_dict(state["config"], source=f"config in {ckpt / STATE_FILE}")
    except ConfigError as e:
        raise SamplingError(str(e)) from None
    try:
        weights = net_state(ckpt, state, net)
    except KeyError:
        raise SamplingError(f"{ckpt / STATE_FILE} has no {net} (keys: {', '.join(sorted(state))})") from None
    G = build_generator(cfg.model)
    try:
        G.load_state_dict(weights)
    except RuntimeError as e:
        raise SamplingError(f"{ckpt / STATE_FILE}: {net} does not fit the model its config describes: {e}") from None
    return TrainedGenerator(prepare_for_inference(G, device), cfg, ckpt, net, state.get("nimg"))


def pick_device(device: str) -> torch.device:
    """'auto' -> the first CUDA GPU if there is one, else the CPU; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
