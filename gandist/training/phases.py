"""The phases of one GAN iteration: D, G and lazy R1/R2, each one whole optimizer step of its net.

A phase opens an optimizer step of its net, feeds it every micro-batch of this rank's batch
(`strategy.gradient_accumulation` of them: strategy.backward) and closes the step (strategy.step),
as StyleGAN2-ADA's phases and nanoGPT's micro-step loop do. So a lazy R1 phase is one D step of its
own whatever the accumulation, and an optimizer step never mixes micro-batches of two phases.

Statistics of a phase go to the tick only if its step was taken (the non-finite guard may skip it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from gandist.objectives.augment import AugmentPipe
from gandist.objectives.losses import class_loss, mode_seeking, pairs_apart
from gandist.objectives.regularizers import LeCam, consistency_penalty, gradient_penalty, r1_penalty
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy


def micro_batches(n: int, *tensors: torch.Tensor | None) -> Iterator[tuple[torch.Tensor | None, ...]]:
    """The i-th of n equal chunks of every tensor (None stays None), for i = 0 .. n-1."""
    parts = [t.chunk(n) if t is not None else [None] * n for t in tensors]
    return zip(*parts)


@dataclass
class Phases:
    """The per-step work of a GAN, independent of where its batch and noise come from."""

    strategy: Strategy
    d_loss: Callable[..., torch.Tensor]
    g_loss: Callable[..., torch.Tensor]
    stats: TickStats
    augment: AugmentPipe = field(default_factory=AugmentPipe)  # identity unless configured
    lecam: LeCam | None = None
    lecam_weight: float = 0.0
    gp_weight: float = 0.0
    class_weight_d: float = 0.0  # D's class loss on reals (a conditional D's class logits)
    class_weight_g: float = 0.0  # G's class loss on its fakes and the classes asked for
    mode_seeking_weight: float = 0.0  # G's mode-seeking term on pairs of the same class
    mode_seeking: str = "batch"  # its means over the batch (batch) or pair by pair (pairs)
    consistency_weight: float = 0.0  # bCR: D's logits on reals and fakes against those on T(images)
    guard: bool = False
    paired: bool = False  # a relativistic loss: each fake is judged against a real of its class (losses.PAIRED)

    def d_phase(
        self,
        real: torch.Tensor,
        z: torch.Tensor,
        c_real: torch.Tensor | None = None,
        c_fake: torch.Tensor | None = None,
    ) -> bool:
        """One D step on this rank's real batch and fakes from z (G not trained); c: class labels or None.

        False if the non-finite guard skipped the step.
        """
        s, pending = self.strategy, []
        G, D = s.train_forward("G"), s.train_forward("D")
        for real_i, z_i, cr_i, cf_i in micro_batches(s.accumulation, real, z, c_real, c_fake):
            with s.autocast():
                with torch.no_grad():
                    fake = G(z_i, cf_i)
                real_seen, fake_seen = self.augment(real_i), self.augment(fake)
                if self.class_weight_d > 0:
                    real_logits, real_classes = D(real_seen, cr_i, classes=True)
                else:
                    real_logits = D(real_seen, cr_i)
                fake_logits = D(fake_seen, cf_i)
                loss = self.d_loss(real_logits.float(), fake_logits.float())
                regularized = loss
                if self.consistency_weight > 0:  # D's forwards on T(images) under the same autocast
                    consistency = consistency_penalty(D, real_seen, real_logits, cr_i) + consistency_penalty(
                        D, fake_seen, fake_logits, cf_i
                    )
                    regularized = regularized + self.consistency_weight * consistency
                    pending.append(("loss/consistency", consistency))
            if self.class_weight_d > 0:
                class_d = class_loss(real_classes, cr_i)
                regularized = regularized + self.class_weight_d * class_d
                accuracy = (real_classes.detach().argmax(1) == cr_i).float().mean()
                pending += [("loss/class_D", class_d), ("class_acc/real", accuracy)]
            if self.lecam is not None:
                lecam = self.lecam.penalty(real_logits.float(), fake_logits.float())
                regularized = regularized + self.lecam_weight * lecam
                pending.append(("loss/lecam", lecam))
            if self.gp_weight > 0:  # in fp32: a gradient of a gradient
                gp = gradient_penalty(s.train_forward("D", eager=True), real_i, fake, cr_i)[0].mean()
                regularized = regularized + self.gp_weight * gp
                pending.append(("loss/gp", gp))
            s.backward("D", regularized)
            # ADA's overfitting signal: sign(D(real)); under a paired loss only differences mean anything, so the
            # share of pairs D ranks right, sign(D(real) - D(fake))
            self.augment.observe(real_logits - fake_logits if self.paired else real_logits)
            pending += [
                ("loss/D", loss),
                ("score/real", real_logits.detach().float().mean()),
                ("score/fake", fake_logits.detach().float().mean()),
            ]
        return self._record("D", s.step("D", guard=self.guard), pending)

    def g_phase(
        self,
        z: torch.Tensor,
        c: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
        c_real: torch.Tensor | None = None,
    ) -> bool:
        """One G step through a frozen D; False if skipped. A paired loss also takes this rank's real batch (and
        its classes, which c then repeats): fake i is judged against real i, or with the mode-seeking term, whose
        second half repeats the first half's classes, fake i + n/2 against real i too."""
        if self.paired and real is None:
            raise ValueError("a relativistic (paired) G loss needs the real batch its fakes are paired with")
        s, pending = self.strategy, []
        G = s.train_forward("G")
        for z_i, c_i, real_i, cr_i in micro_batches(s.accumulation, z, c, real, c_real):
            n = z_i.shape[0]
            order = None
            partner = torch.arange(n, device=z_i.device) if self.paired else None  # each fake's real partner
            if self.mode_seeking_weight > 0 and c_i is not None:  # pairs (i, i + n/2) of the same class
                half = n // 2
                c_i = torch.cat([c_i[:half], c_i[:half], c_i[2 * half :]])
                if partner is not None:
                    partner[half : 2 * half] = partner[:half]
                order = pairs_apart(n, c_i.device)  # D sees no pair within one minibatch std group
            with s.frozen("D") as D, s.autocast():
                fake = G(z_i, c_i)
                seen, c_seen = (fake, c_i) if order is None else (fake[order], c_i[order])
                if self.class_weight_g > 0:
                    fake_logits, fake_classes = D(self.augment(seen), c_seen, classes=True)
                else:
                    fake_logits = D(self.augment(seen), c_seen)
                if self.paired:
                    with torch.no_grad():  # D's logits on the reals: constants of G's loss
                        real_logits = D(self.augment(real_i), cr_i)
                    partners = real_logits[partner if order is None else partner[order]]
                    loss = self.g_loss(fake_logits.float(), partners.float())
                else:
                    loss = self.g_loss(fake_logits.float())
            total = loss
            if self.mode_seeking_weight > 0:
                seeking = mode_seeking(fake, z_i, per_pair=self.mode_seeking == "pairs")
                total = total + self.mode_seeking_weight * seeking
                pending.append(("loss/mode_seeking", seeking))
            if self.class_weight_g > 0:
                class_g = class_loss(fake_classes, c_seen)
                total = total + self.class_weight_g * class_g
                accuracy = (fake_classes.detach().argmax(1) == c_seen).float().mean()
                pending += [("loss/class_G", class_g), ("class_acc/fake", accuracy)]
            s.backward("G", total)
            pending.append(("loss/G", loss))
        return self._record("G", s.step("G", guard=self.guard), pending)

    def r1_phase(
        self,
        real: torch.Tensor,
        c: torch.Tensor | None,
        gamma: float,
        interval: int,
        z: torch.Tensor | None = None,
        c_fake: torch.Tensor | None = None,
        r2_gamma: float = 0.0,
    ) -> bool:
        """Lazy R1 (and R2) as its own D step: gamma/2 * E|grad D(aug(real))|^2 [+ r2_gamma/2 * E|grad D(aug(G(z)))|^2],
        scaled by the steps it stands for. R2's fakes: G's samples from the D phase's noise z and classes c_fake, or
        under a paired loss the real batch's classes c (as step asks G for)."""
        if r2_gamma > 0 and z is None:
            raise ValueError("R2 (train.r2_gamma) needs the noise of the fakes it regularises D around")
        s, pending = self.strategy, []
        D = s.train_forward("D", eager=True)  # compiled: no double backward
        G = s.train_forward("G") if r2_gamma > 0 else None
        for real_i, c_i, z_i, cf_i in micro_batches(s.accumulation, real, c, z, self._fake_classes(c, c_fake)):
            loss = 0.0
            if gamma > 0:
                with torch.no_grad():
                    images = self.augment(real_i)
                loss = loss + _lazy_penalty(D, images, c_i, gamma / 2 * interval, "loss/r1", pending)
            if r2_gamma > 0:
                with torch.no_grad():
                    images = self.augment(G(z_i, cf_i))
                loss = loss + _lazy_penalty(D, images, cf_i, r2_gamma / 2 * interval, "loss/r2", pending)
            s.backward("D", loss)
        return self._record("D_r1", s.step("D", guard=self.guard), pending)

    def _fake_classes(self, c_real: torch.Tensor | None, c_fake: torch.Tensor | None) -> torch.Tensor | None:
        """The classes G is asked for: the drawn ones, or under a paired loss the real batch's (each fake then has
        a real partner of its class, as R3GAN's conditional training does)."""
        return c_real if self.paired else c_fake

    def _record(self, name: str, step_stats: dict[str, torch.Tensor], pending: list) -> bool:
        """Add a phase's statistics (device tensors: no host sync); True unless the non-finite guard skipped
        the step."""
        if "nonfinite" in step_stats and step_stats["nonfinite"].item() > 0:  # a host tensor: no sync
            return False
        for key, value in pending:
            self.stats.add(key, value)
        if "grad_norm" in step_stats:
            self.stats.add(f"grad_norm/{name}", step_stats["grad_norm"])
        if "skipped" in step_stats:
            self.stats.add(f"skipped_frac/{name}", step_stats["skipped"])
        return True

    def step(
        self,
        real: torch.Tensor,
        z_d: torch.Tensor,
        z_g: torch.Tensor,
        c_real: torch.Tensor | None = None,
        c_d: torch.Tensor | None = None,
        c_g: torch.Tensor | None = None,
        g_step: bool = True,
    ) -> bool:
        """One D step then (if g_step) one G step on this rank's batch; False if the non-finite guard skipped
        either. A paired loss asks G for the real batch's classes in both phases (c_d, c_g unused), so that
        every fake is paired with a real of its class, as R3GAN's conditional training does."""
        c_d, c_g = self._fake_classes(c_real, c_d), self._fake_classes(c_real, c_g)
        d_ok = self.d_phase(real, z_d, c_real, c_d)
        if not g_step:
            return d_ok
        return self.g_phase(z_g, c_g, *((real, c_real) if self.paired else ())) and d_ok


def _lazy_penalty(
    D: Callable[..., torch.Tensor], images: torch.Tensor, c: torch.Tensor | None, scale: float, key: str, pending: list
) -> torch.Tensor:
    """scale * E|grad D(images)|^2 (R1 on reals, R2 on fakes), its mean noted under `key` in pending."""
    penalty, logits = r1_penalty(D, images, c)
    pending.append((key, penalty.mean()))
    # logits * 0: every D parameter takes part in this backward, as DDP's reducer expects
    return penalty.mean() * scale + logits.float().sum() * 0
