"""Learning-rate schedules counted in images shown (kimg), so they do not change with batch or GPU count.

multiplier(kimg) = warm-up ramp (linear from 0 over lr_warmup_kimg)
                 x decay over [lr_warmup_kimg, total_kimg]: constant 1, linear or cosine to lr_final
"""

from __future__ import annotations

import math


def lr_multiplier(kimg: float, total_kimg: float, warmup_kimg: float, decay: str, final: float) -> float:
    """Factor on the base learning rate after `kimg` thousand images of a `total_kimg` run."""
    ramp = min(1.0, kimg / warmup_kimg) if warmup_kimg > 0 else 1.0
    if decay == "constant":
        return ramp
    span = max(total_kimg - warmup_kimg, 1e-9)
    progress = min(max((kimg - warmup_kimg) / span, 0.0), 1.0)
    if decay == "linear":
        shape = 1.0 - progress
    elif decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown learning-rate decay {decay!r} (known: constant, linear, cosine)")
    return ramp * (final + (1.0 - final) * shape)
