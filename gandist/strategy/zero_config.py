"""The DeepSpeed config of one engine, built from gandist's settings (and a user's JSON, if given).

Batch sizes, gradient accumulation, the ZeRO stage and clipping always come from gandist (the JSON may
say "auto" or the same number). Precision never uses DeepSpeed's `bf16`/`fp16` sections: they cast the
model to half precision while BatchNorm's running statistics stay fp32 ("Expected running_mean to have
type BFloat16 but got Float", docs/design.md), nor its `torch_autocast` section (its fp16 loss scale
never recovers from an overflow under ZeRO): bf16 and fp16 run fp32 engines inside gandist's torch
autocast, and fp16 gets gandist's dynamic loss scale (zero.py).
"""

from __future__ import annotations

import copy
from typing import Any

from gandist.config import ConfigError

# DeepSpeed prints a line every `steps_per_print` steps; gandist reports per tick itself.
QUIET_STEPS = 2**31 - 1
# DeepSpeed's default stage3_param_persistence_threshold (elements): smaller parameters stay whole on every rank
PERSISTENCE_THRESHOLD = 100_000
# zero_optimization keys sized in elements from strategy.bucket_mb (a JSON's own numbers win)
MEMORY_KEYS = (
    "reduce_bucket_size",
    "allgather_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "sub_group_size",
)


def bucket_elements(bucket_mb: float) -> int:
    """fp32 elements in strategy.bucket_mb MiB, a multiple of 512 (DeepSpeed wants bucket sizes aligned)."""
    return max(512, int(bucket_mb * 2**20 / 4) // 512 * 512)


def build_deepspeed_config(
    base: dict[str, Any],
    *,
    source: str,
    zero_stage: int,
    micro_batch: int,
    accumulation: int,
    world_size: int,
    grad_clip: float,
    optimizer_defaults: dict[str, Any] | None = None,
    bucket_mb: float = 100.0,
) -> dict[str, Any]:
    """A complete DeepSpeed config dict for one net.

    base: the user's JSON (may be empty); source: where it came from, for messages; optimizer_defaults:
    lr, betas, eps, weight_decay filling "auto" in the JSON's `optimizer.params` (used only when the JSON
    defines an optimizer); bucket_mb: strategy.bucket_mb, sizing MEMORY_KEYS the JSON leaves out or "auto".
    """
    cfg = copy.deepcopy(base)
    where = source or "the generated DeepSpeed config"
    _fill(
        cfg, "train_micro_batch_size_per_gpu", micro_batch, where, "train.batch / (processes x gradient_accumulation)"
    )
    _fill(cfg, "gradient_accumulation_steps", accumulation, where, "strategy.gradient_accumulation")
    _fill(cfg, "train_batch_size", micro_batch * accumulation * world_size, where, "train.batch")
    _fill(cfg, "gradient_clipping", grad_clip, where, "strategy.grad_clip")
    zero = cfg.setdefault("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{where}: 'zero_optimization' must be an object, got {zero!r}")
    _fill(zero, "stage", zero_stage, where, "strategy.zero_stage", prefix="zero_optimization.")
    for key in MEMORY_KEYS:
        if zero.get(key, "auto") == "auto":
            zero[key] = bucket_elements(bucket_mb)
    for section in ("fp16", "bf16"):
        enabled = cfg.get(section, {}).get("enabled", False) if isinstance(cfg.get(section), dict) else cfg.get(section)
        if enabled is True:
            raise ConfigError(
                f"{where}: '{section}.enabled' is true, but DeepSpeed's {section} section casts the nets to half "
                "precision, which breaks BatchNorm: remove the section and set train.precision instead "
                "(gandist uses torch autocast with fp32 master weights)"
            )
        cfg.pop(section, None)
    if "torch_autocast" in cfg:
        raise ConfigError(f"{where}: remove the 'torch_autocast' section and set train.precision instead")
    if "scheduler" in cfg:
        raise ConfigError(f"{where}: a 'scheduler' section is not supported (gandist keeps the learning rate constant)")
    if isinstance(cfg.get("optimizer"), dict):
        params = cfg["optimizer"].setdefault("params", {})
        for key, value in (optimizer_defaults or {}).items():
            if params.get(key, "auto") == "auto":
                params[key] = list(value) if isinstance(value, tuple) else value
    cfg.setdefault("steps_per_print", QUIET_STEPS)
    cfg.setdefault("wall_clock_breakdown", False)
    _drop_auto(cfg)  # values gandist cannot derive (bucket sizes sized for transformers): DeepSpeed's defaults
    return cfg


def _fill(cfg: dict, key: str, value: Any, where: str, ours: str, prefix: str = "") -> None:
    """Set cfg[key] = value unless the JSON holds a different number there (then name both)."""
    given = cfg.get(key, "auto")
    if given != "auto" and given != value:
        raise ConfigError(
            f"{where}: '{prefix}{key}' = {given!r} but gandist's config gives {value!r} (from {ours}): "
            'set it to "auto" or remove it from the JSON'
        )
    cfg[key] = value


def _drop_auto(node: Any) -> None:
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if v == "auto"]:
            del node[key]
        for value in node.values():
            _drop_auto(value)
