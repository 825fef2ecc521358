"""GAN losses as pure functions of D's logits. Each returns a scalar (the batch mean).

Non-saturating (Goodfellow et al. 2014, the seed DCGAN's loss):
    L_D = softplus(-D(x)) + softplus(D(G(z)))  =  -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z))))
    L_G = softplus(-D(G(z)))                   =  -log sigmoid(D(G(z)))
Hinge (Lim & Ye 2017; Miyato et al. 2018):
    L_D = relu(1 - D(x)) + relu(1 + D(G(z)))
    L_G = -D(G(z))
Least squares (Mao et al. 2017, targets a=0 for fakes, b=c=1 for reals):
    L_D = (D(x) - 1)^2 / 2 + D(G(z))^2 / 2
    L_G = (D(G(z)) - 1)^2 / 2
Relativistic pairing (Jolicoeur-Martineau 2019's RpGAN; R3GAN, Huang et al. 2024), each fake paired with a
real of its class (the phases ask G for the real batch's classes):
    L_D = softplus(D(G(z)) - D(x))
    L_G = softplus(D(x) - D(G(z)))
Only each pair's difference counts: D learns how much more real x looks than its partner fake, not an absolute
score per image, and G's step is pulled by the reals its fakes are paired with. Every fake is compared with a
real, so a mode G misses leaves its reals' pairs with large losses: in Sun et al. 2020's analysis this loss's
landscape has no mode-collapse basins where the non-saturating loss's has them, and R3GAN covers all of
StackedMNIST's modes with it.
Wasserstein (Arjovsky et al. 2017), with the gradient penalty of Gulrajani et al. 2017 added by
the training loop (train.gp_weight, see regularizers.gradient_penalty):
    L_D = D(G(z)) - D(x)
    L_G = -D(G(z))
Class loss of a conditional D that also gives class logits (train.class_weight_d, train.class_weight_g):
the cross-entropy of the class logits with the class of the real images (added to D's loss) or with
the class G was asked for (added to G's loss).
Mode-seeking term of G (Mao et al. 2019, train.mode_seeking_weight), on pairs of samples of one class,
the means taken over the whole batch (train.mode_seeking=batch, the paper's) or pair by pair (pairs):
    batch:  L_ms = 1 / (mean|G(z1, c) - G(z2, c)| / mean|z1 - z2| + 1e-5)
    pairs:  L_ms = mean over pairs i of 1 / (mean|G(z1_i, c_i) - G(z2_i, c_i)| / mean|z1_i - z2_i| + 1e-5)
The pairs form pushes each pair apart in proportion to 1 / its own ratio squared, so the most collapsed
pairs are pushed hardest; the batch form pushes every pair alike. G's phase shows D such a batch in the
order of pairs_apart, so that no pair falls into one group of D's minibatch std layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def nonsaturating_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's non-saturating loss: -log D(x) - log(1 - D(G(z))), averaged over each batch."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def nonsaturating_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's non-saturating loss: -log D(G(z))."""
    return F.softplus(-fake_logits).mean()


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's hinge loss: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's hinge loss: -D(G(z))."""
    return -fake_logits.mean()


def relativistic_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's relativistic pairing loss: softplus(D(G(z_i)) - D(x_i)), pair by pair (equal batches)."""
    return F.softplus(fake_logits - real_logits).mean()


def relativistic_g(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """G's relativistic pairing loss: softplus(D(x_i) - D(G(z_i))), each fake against its real partner."""
    return F.softplus(real_logits - fake_logits).mean()


def least_squares_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's least-squares loss: (D(x) - 1)^2 / 2 + D(G(z))^2 / 2."""
    return 0.5 * (real_logits - 1.0).square().mean() + 0.5 * fake_logits.square().mean()


def least_squares_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's least-squares loss: (D(G(z)) - 1)^2 / 2."""
    return 0.5 * (fake_logits - 1.0).square().mean()


def wgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic's Wasserstein loss: D(G(z)) - D(x) (needs a Lipschitz constraint, e.g. the gradient penalty)."""
    return fake_logits.mean() - real_logits.mean()


def wgan_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """G's Wasserstein loss: -D(G(z))."""
    return -fake_logits.mean()


def class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of N x K class logits with int64 labels (the batch mean)."""
    return F.cross_entropy(class_logits.float(), labels)


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, per_pair: bool = False) -> torch.Tensor:
    """Mao et al. 2019's mode-seeking term for G: 1 / (|x1 - x2| / |z1 - z2| + 1e-5), the first half of the
    batch paired with the second (mean absolute differences); small when distinct z give distinct images.
    per_pair: the mean of each pair's term instead of the term of the batch's means."""
    half = fake.shape[0] // 2
    images = (fake[:half].float() - fake[half : 2 * half].float()).abs()
    noise = (z[:half].float() - z[half : 2 * half].float()).abs()
    if per_pair:
        return (1.0 / (images.flatten(1).mean(1) / noise.flatten(1).mean(1) + 1e-5)).mean()
    return 1.0 / (images.mean() / noise.mean() + 1e-5)


def pairs_apart(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The order in which G's phase shows D a batch of n drawn in mode-seeking pairs (i, i + n/2): the second
    half rolled by one. D's minibatch std groups are strided (members j, j + n/g, j + 2n/g, ...), so in the
    batch's own order each group would hold whole same-class pairs; rolled, a group's members are unrelated
    samples, as they are in D's phase. The mean losses do not depend on the order; only that layer does."""
    order, half = torch.arange(n, device=device), n // 2
    if half:
        order[half : 2 * half] = half + (torch.arange(half, device=device) + 1) % half
    return order


LOSSES: dict[str, tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]] = {
    "nonsaturating": (nonsaturating_d, nonsaturating_g),
    "hinge": (hinge_d, hinge_g),
    "least_squares": (least_squares_d, least_squares_g),
    "wgan": (wgan_d, wgan_g),
    "relativistic": (relativistic_d, relativistic_g),
}
PAIRED = frozenset({"relativistic"})  # losses whose G loss takes (fake logits, the logits of their real partners)


def get_losses(name: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """Return (d_loss, g_loss) for a loss name."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return LOSSES[name]
