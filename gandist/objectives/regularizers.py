"""Regularisers of D: R1, the WGAN gradient penalty, LeCam and consistency. Pure torch, no distribution.

R1 (Mescheder et al. 2018): gamma / 2 * E[ ||grad_x D(x)||^2 ] on real images. Applied lazily (every
k-th step, scaled by k) as in StyleGAN2. The gradient is taken with `torch.autograd.grad(...,
create_graph=True)` so that the following ordinary backward differentiates it again; the
alternative, `loss.backward(create_graph=True)`, aborts under DDP (no double backward there).

Gradient penalty (Gulrajani et al. 2017): E[ (||grad_x D(x_hat)||_2 - 1)^2 ] on random
interpolates x_hat between real and fake images.

LeCam (Tseng et al. 2021): keeps D's outputs on reals near the running mean of its outputs on
fakes and vice versa, E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(G(z)))^2], which bounds
how far D can drift when data is scarce.

Balanced consistency regularisation (bCR, Zhao et al. 2021): E[(D(x) - D(T(x)))^2] on the reals and on
the fakes D is trained on, T a random horizontal flip and a shift of up to 1/8 of the image (mirrored
edges). D learns to give an image and its slightly moved mirror image the same score without being
trained on T(x) as data; still, where T's images are not images of the data (objects centred on a plain
ground, all facing one way, as in Fashion-MNIST), D's invariance leaks into G's samples (README).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gandist.objectives.augment import ada_augment


def r1_penalty(
    D: Callable[..., torch.Tensor], images: torch.Tensor, c: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image squared gradient norm ||grad_x D(x, c)||^2 at `images`, and D's logits there.

    The penalty keeps its graph (create_graph=True): backward of a loss built from it reaches D's
    parameters. `images` are used as D's input as they are (pass the augmented reals when
    augmenting: the penalty is then taken on the distribution D actually sees).
    """
    x = images.detach().requires_grad_(True)
    logits = D(x, c)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.square().sum(dim=tuple(range(1, grad.dim()))), logits


def gradient_penalty(
    D: Callable[..., torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    c: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (||grad D(x_hat)||_2 - 1)^2 at random interpolates x_hat of real and fake, and D(x_hat)."""
    shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(shape, device=real.device, dtype=real.dtype, generator=generator)
    x = torch.lerp(fake.detach(), real.detach(), alpha).requires_grad_(True)
    logits = D(x, c)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square(), logits


def consistency_transform(images: torch.Tensor) -> torch.Tensor:
    """bCR's T: each image flipped left-right with probability 1/2, then shifted by a random whole number of
    pixels in [-1/8, 1/8] of each side (0 included), edges mirrored (the global generator of the images' device)."""
    images = ada_augment(images, ("xflip",), torch.tensor(0.5, device=images.device))
    return ada_augment(images, ("translate",), torch.tensor(1.0, device=images.device))


def consistency_penalty(
    D: Callable[..., torch.Tensor], images: torch.Tensor, logits: torch.Tensor, c: torch.Tensor | None = None
) -> torch.Tensor:
    """bCR's term for one batch: mean of (D(images, c) - D(T(images), c))^2, `logits` being D(images, c).

    The gradient flows through both sides, as in the paper; call it under the same autocast as `logits`.
    """
    moved = D(consistency_transform(images.detach()), c)
    return (logits.float() - moved.float()).square().mean()


class LeCam:
    """LeCam regulariser with its running means of D's outputs on reals and fakes (device tensors)."""

    def __init__(self, decay: float = 0.99, device: torch.device | str = "cpu"):
        if not 0 <= decay < 1:
            raise ValueError(f"LeCam decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.ema_real = torch.zeros((), device=device)
        self.ema_fake = torch.zeros((), device=device)
        self.started = False

    def penalty(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Update the running means with this batch, then return the penalty (a scalar)."""
        weight = 1.0 - self.decay if self.started else 1.0  # the first batch sets the means: no pull towards 0
        self.started = True
        with torch.no_grad():
            self.ema_real.lerp_(real_logits.detach().float().mean(), weight)
            self.ema_fake.lerp_(fake_logits.detach().float().mean(), weight)
        return (
            torch.relu(real_logits - self.ema_fake).square().mean()
            + torch.relu(self.ema_real - fake_logits).square().mean()
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The running means, for checkpoints."""
        return {"ema_real": self.ema_real.clone(), "ema_fake": self.ema_fake.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the running means saved by state_dict."""
        self.ema_real.copy_(state["ema_real"])
        self.ema_fake.copy_(state["ema_fake"])
        self.started = True
