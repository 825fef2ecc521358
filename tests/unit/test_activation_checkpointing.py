"""model.activation_checkpointing: each block recomputed in the backward pass, with the same gradients."""

from __future__ import annotations

import pytest
import torch

from gandist.config import load_config
from gandist.models import build_nets
from gandist.objectives.regularizers import r1_penalty

RESNET = ["model.arch=resnet", "model.num_classes=3", "model.d_mbstd=4"]  # spectral norm, BatchNorm, mbstd
ARCHS = {
    "dcgan": ["model.arch=dcgan"],
    "resnet": RESNET,
    "resnet-hierarchical-z": [*RESNET, "model.g_shared_dim=4"],  # z's chunks and the embedding into each block
    "stylegan2": ["model.arch=stylegan2", "model.num_classes=3"],  # noise inputs drawn inside the blocks
}


def _one_step(arch: str, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients (and buffers afterwards) of a D loss on reals and fakes, a G loss and an R1 penalty."""
    overrides = [*ARCHS[arch], "model.g_width=4", "model.d_width=4", "model.z_dim=8"]
    cfg = load_config(None, [*overrides, f"model.activation_checkpointing={str(checkpointing).lower()}"])
    G, D = build_nets(cfg.model, seed=0)
    assert G.activation_checkpointing is checkpointing and D.activation_checkpointing is checkpointing
    gen = torch.Generator().manual_seed(1)
    real, z = torch.rand(4, 1, 32, 32, generator=gen) * 2 - 1, torch.randn(4, 8, generator=gen)
    c = torch.tensor([0, 1, 2, 0]) if cfg.model.num_classes else None
    torch.manual_seed(2)  # noise inputs
    out = {}
    # D phase: D called twice (two power iterations of each spectral norm), fakes detached
    fake = G(z, c).detach()
    (torch.nn.functional.softplus(-D(real, c)) + torch.nn.functional.softplus(D(fake, c))).mean().backward()
    out.update({f"D_grad.{k}": p.grad.clone() for k, p in D.named_parameters()})
    D.zero_grad()
    # G phase through a frozen D, unfrozen before G's backward (as the loop's strategy.frozen does)
    D.requires_grad_(False)
    loss = torch.nn.functional.softplus(-D(G(z, c), c)).mean()
    D.requires_grad_(True)
    loss.backward()
    assert all(p.grad is None for p in D.parameters()), "the frozen D collected gradients"
    out.update({f"G_grad.{k}": p.grad.clone() for k, p in G.named_parameters()})
    # R1: a gradient of a gradient through checkpointed blocks
    D.zero_grad(set_to_none=True)
    penalty, _ = r1_penalty(D, real, c)
    penalty.mean().backward()
    out.update({f"R1_grad.{k}": p.grad.clone() for k, p in D.named_parameters() if p.grad is not None})
    out.update({f"G.{k}": b.clone() for k, b in G.named_buffers()})
    out.update({f"D.{k}": b.clone() for k, b in D.named_buffers()})
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_checkpointed_blocks_give_the_same_gradients_and_buffers(arch):
    plain, checkpointed = _one_step(arch, False), _one_step(arch, True)
    assert plain.keys() == checkpointed.keys()
    for key, value in plain.items():
        torch.testing.assert_close(checkpointed[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_checkpointing_is_off_without_gradients():
    cfg = load_config(None, ["model.arch=stylegan2", "model.g_width=4", "model.d_width=4", "model.z_dim=8"])
    cfg.model.activation_checkpointing = True
    G, _ = build_nets(cfg.model, seed=0)
    with torch.no_grad():  # sampling: nothing to recompute, nothing is wrapped
        assert G(torch.randn(2, 8)).shape == (2, 1, 32, 32)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_checkpointing_keeps_fewer_activations(arch):
    overrides = [*ARCHS[arch], "model.g_width=4", "model.d_width=4", "model.z_dim=8"]
    saved = []
    for on in (False, True):
        cfg = load_config(None, [*overrides, f"model.activation_checkpointing={str(on).lower()}"])
        G, D = build_nets(cfg.model, seed=0)
        c = torch.tensor([0, 1, 2, 0]) if cfg.model.num_classes else None
        sizes: list[int] = []

        def pack(t: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            D(G(torch.randn(4, 8), c), c).sum()
        saved.append(sum(sizes))
    assert saved[1] < 0.6 * saved[0], saved
