"""Shipping a generator: its weights as safetensors with the architecture beside them, and loading them back.

    gandist export runs/NAME --out g.safetensors     ->  g.safetensors (+ g.json, the same description)
    gandist export runs/NAME --out g.pt2             ->  a torch.export program (runs without gandist)

    import gandist
    G = gandist.load_generator("g.safetensors")       # or a run folder, a checkpoint folder, a .pt2
    images = G(torch.randn(16, G.z_dim))              # N x C x H x W in [-1, 1]

The safetensors header carries the description (JSON under the metadata key "gandist"), so the
file alone is enough to rebuild G; g.json is the same text for people and other tools. G is
rebuilt through the trainer's own builder from the model section of the config, so anything the
config can describe, the export can carry.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from gandist.config import ConfigError, from_dict, to_dict
from gandist.files import atomic_write
from gandist.generator.load import SamplingError, TrainedGenerator, load_trained, prepare_for_inference
from gandist.generator.sample import check_out_path
from gandist.loading import UnsafeFile, load_exported
from gandist.models import build_generator

FORMAT = "gandist-generator/1"
METADATA_KEY = "gandist"
EXTENSIONS = (".safetensors", ".pt2")


def describe(tg: TrainedGenerator) -> dict:
    """The JSON description of an exported generator: enough to rebuild it and to feed it."""
    import gandist

    m = tg.cfg.model
    return {
        "format": FORMAT,
        "model": to_dict(tg.cfg)["model"],
        "z_dim": m.z_dim,
        "num_classes": tg.num_classes,
        "input": "z: float32 N x z_dim drawn from N(0, I)"
        + ("; labels: int64 N class ids, called G(z, labels)" if tg.num_classes else ""),
        "output": f"float32 N x {m.channels} x {m.resolution} x {m.resolution} in [-1, 1]",
        "net": tg.net,
        "checkpoint": str(tg.checkpoint),
        "nimg": tg.nimg,
        "gandist_version": gandist.__version__,
    }


def export_generator(source: str | Path | TrainedGenerator, out: str | Path, net: str = "G_ema") -> list[Path]:
    """Export G_ema (or G) of a run / checkpoint to `out` (.safetensors + .json, or .pt2); returns the files."""
    out = check_out_path(out, EXTENSIONS)
    tg = source if isinstance(source, TrainedGenerator) else load_trained(source, net=net, device="cpu")
    G = tg.G.cpu()
    info = describe(tg)
    if out.suffix.lower() == ".pt2":
        example = (torch.zeros(2, tg.z_dim),) + ((torch.zeros(2, dtype=torch.int64),) if tg.num_classes else ())
        batch = torch.export.Dim("batch", min=1, max=2**20)
        shapes = tuple({0: batch} for _ in example)
        program = torch.export.export(G, example, dynamic_shapes=shapes)
        atomic_write(out, lambda tmp: torch.export.save(program, tmp, extra_files={"gandist.json": json.dumps(info)}))
        return [out]
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in G.state_dict().items()}
    text = json.dumps(info, indent=2)
    atomic_write(out, lambda tmp: tmp.write_bytes(save(tensors, metadata={METADATA_KEY: text})))
    description = out.with_suffix(".json")
    atomic_write(description, lambda tmp: tmp.write_text(text + "\n"))
    return [out, description]


def _from_safetensors(path: Path, device: str | torch.device) -> nn.Module:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise SamplingError(f"{path} is not a readable safetensors file: {e}") from None
    if METADATA_KEY not in metadata:
        raise SamplingError(f"{path} was not written by `gandist export` (no {METADATA_KEY!r} metadata in its header)")
    info = json.loads(metadata[METADATA_KEY])
    if info.get("format") != FORMAT:
        raise SamplingError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}; re-export with this gandist")
    try:
        cfg = from_dict({"model": info["model"]}, source=f"model description in {path}")
    except ConfigError as e:
        raise SamplingError(str(e)) from None
    G = build_generator(cfg.model)
    try:
        G.load_state_dict(load_file(str(path)))
    except RuntimeError as e:
        raise SamplingError(f"{path}: the weights do not fit the model it describes: {e}") from None
    G.num_classes = info.get("num_classes", 0)
    return prepare_for_inference(G, device)


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """A ready generator (eval mode, no gradients, on `device`) from an export or a training run.

    `path`: a `.safetensors` file written by `gandist export`, a `.pt2` program, a run folder (its
    newest complete checkpoint's G_ema) or a checkpoint folder. Call it as G(z) with z of shape
    N x G.z_dim (G(z, labels) for a conditional model); it returns N x C x H x W in [-1, 1].
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        return _from_safetensors(path, device)
    if path.is_file() and path.suffix == ".pt2":
        extra = {"gandist.json": ""}
        try:
            G = load_exported(path, extra_files=extra).module().to(device)
        except UnsafeFile as e:
            raise SamplingError(str(e)) from None
        info = json.loads(extra["gandist.json"] or "{}")
        G.z_dim, G.num_classes = info.get("z_dim"), info.get("num_classes", 0)
        return G
    if path.is_file() and path.name != "state.pt":
        raise SamplingError(
            f"{path}: expected a .safetensors or .pt2 file from `gandist export`, a run folder or a checkpoint folder"
        )
    tg = load_trained(path, net="G_ema", device=device)
    tg.G.num_classes = tg.num_classes
    return tg.G
