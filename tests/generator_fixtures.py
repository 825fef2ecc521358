"""Generators for the tests of sample / interpolate / generate / export.

`tiny_trained_run` trains configs/tiny.yaml on the embedded data once per pytest session (its
folder lives in the session's base temp dir, so every module that asks reuses it), with a
checkpoint halfway and one at the end. `ToyConditionalG` stands in for a class-conditional G,
which the model zoo does not have yet: its image is its class id, so labels can be checked.
`read_dataset` reads a generated dataset back, refusing duplicate keys.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import torch
from torch import nn

from gandist.config import Config
from gandist.generator.load import TrainedGenerator
from gandist.training.checkpoint import latest_checkpoint
from tests.conftest import run, train_cmd


def tiny_trained_run(tmp_path_factory) -> Path:
    """A run folder with complete checkpoints at step 4 and step 8 (tiny DCGAN, 32 px grey)."""
    root = tmp_path_factory.getbasetemp() / "tiny-trained-run"
    run_dir = root / "r"
    if latest_checkpoint(run_dir) is None:
        run(train_cmd(f"output_dir={root}", "run_name=r", "train.checkpoint_kimg=0.128"))
    return run_dir


class ToyConditionalG(nn.Module):
    """G(z, labels): a 32 px grey image whose every pixel is (label + 1) / num_classes * 2 - 1 (plus 0 * z)."""

    def __init__(self, num_classes: int = 3, z_dim: int = 4):
        super().__init__()
        self.num_classes, self.z_dim = num_classes, z_dim
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        level = (labels.float() + 1) / self.num_classes * 2 - 1 + 0 * z[:, 0]
        return (self.scale * level).view(-1, 1, 1, 1).expand(-1, 1, 32, 32)


def toy_conditional(num_classes: int = 3) -> TrainedGenerator:
    """ToyConditionalG wrapped as a trained generator whose config says it has `num_classes` classes."""
    cfg = Config()
    cfg.model.z_dim = 4
    cfg.model.num_classes = num_classes  # the field a conditional model adds to ModelConfig
    G = ToyConditionalG(num_classes, 4).eval()
    return TrainedGenerator(G, cfg, checkpoint=None, net="G_ema", nimg=0)


def toy_pixel(label: int, num_classes: int = 3) -> int:
    """The uint8 value of every pixel of ToyConditionalG's image for a class."""
    level = (label + 1) / num_classes * 2 - 1
    return int(round((level + 1) * 127.5))


def read_dataset(out_dir: Path) -> dict[int, dict[str, bytes]]:
    """key (as int) -> {ext: bytes} over all shards in the index, refusing duplicate keys."""
    index = json.loads((out_dir / "index.json").read_text())
    samples: dict[int, dict[str, bytes]] = {}
    for name in index["shards"]:
        with tarfile.open(out_dir / name) as tar:
            for member in tar:
                key, ext = member.name.split(".", 1)
                entry = samples.setdefault(int(key), {})
                assert ext not in entry, f"duplicate {member.name} in {name}"
                entry[ext] = tar.extractfile(member).read()
    return samples
