"""Which strategy a run uses: gandist's `strategy.*` config and the launcher's environment, resolved once.

Two ways select DeepSpeed, with the same result:

    accelerate launch --config_file launch/deepspeed_zero2.yaml gandist/train.py ...      (accelerate's way)
    accelerate launch --config_file launch/cpu_2proc.yaml gandist/train.py strategy.name=deepspeed strategy.zero_stage=2

An accelerate DeepSpeed launch starts the processes with ACCELERATE_USE_DEEPSPEED=true and the yaml's
`deepspeed_config` as ACCELERATE_* variables. gandist builds its own two engines (accelerate's multi-model
DeepSpeed path does not fit a GAN: docs/design.md), so it reads those variables here. A value given in
several places (config key, launch environment, DeepSpeed JSON) must agree; otherwise the run stops and the
message names each place.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gandist.config import ConfigError, StrategyConfig

ENV_USE_DEEPSPEED = "ACCELERATE_USE_DEEPSPEED"
ENV_ZERO_STAGE = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
ENV_ACCUMULATION = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
ENV_CLIPPING = "ACCELERATE_GRADIENT_CLIPPING"
ENV_CONFIG_FILE = "ACCELERATE_DEEPSPEED_CONFIG_FILE"
ENV_OFFLOAD = ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")
ENV_MIXED_PRECISION = "ACCELERATE_MIXED_PRECISION"

DEFAULT_ZERO_STAGE = 2


@dataclass(frozen=True)
class StrategyPlan:
    """The resolved choice: what to build, and where each value came from (for messages)."""

    name: str
    """single, ddp or deepspeed."""
    precision: str
    """The requested train.precision after the launch's mixed_precision (auto still possible)."""
    zero_stage: int | None = None
    """ZeRO stage 0-3 (deepspeed only)."""
    gradient_accumulation: int = 1
    """Micro-batches per optimizer step."""
    grad_clip: float = 0.0
    """Gradient-norm clipping threshold; 0: off."""
    deepspeed_json: dict[str, Any] = field(default_factory=dict)
    """The DeepSpeed JSON's contents (empty: generated)."""
    deepspeed_json_path: str = ""
    """Where deepspeed_json came from."""
    source: str = "gandist config"
    """'accelerate DeepSpeed launch' or 'gandist config'."""
    bucket_mb: float = 100.0
    """strategy.bucket_mb: DeepSpeed's bucket, gathering and sub-group sizes (zero_config.py)."""


def _agree(values: list[tuple[str, Any]], what: str) -> Any:
    """The one value given among (place, value) pairs (None: not given there); error if places disagree."""
    given = [(place, v) for place, v in values if v is not None]
    if any(v != given[0][1] for _, v in given):
        places = "; ".join(f"{place} = {v!r}" for place, v in given)
        raise ConfigError(
            f"{what} is set differently in several places ({places}): remove all but one or make them agree"
        )
    return given[0][1] if given else None


def _env_number(environ: Mapping[str, str], key: str, kind: type) -> Any:
    raw = environ.get(key)
    if raw is None or raw.strip().lower() in ("", "none"):
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {key}={raw!r} (from the accelerate launch config) is not a {kind.__name__}"
        ) from None


def load_deepspeed_json(path: str) -> dict[str, Any]:
    """Read a DeepSpeed JSON config, with errors naming the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"DeepSpeed config file {path!r} does not exist (key 'strategy.deepspeed_config' or {ENV_CONFIG_FILE})"
        )
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config file {path!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config file {path!r} must hold a JSON object, got {type(data).__name__}")
    return data


def _json_number(data: dict, dotted: str) -> Any:
    """A numeric value at a dotted path of the JSON, or None if absent or 'auto'."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None if value == "auto" else value


def plan_strategy(cfg: StrategyConfig, precision: str, world_size: int, environ: Mapping[str, str]) -> StrategyPlan:
    """Resolve `strategy.*`, `train.precision` and the launcher's environment into one StrategyPlan."""
    ds_launch = environ.get(ENV_USE_DEEPSPEED, "false").strip().lower() == "true"
    if ds_launch and cfg.name in ("single", "ddp"):
        raise ConfigError(
            f"key 'strategy.name' = {cfg.name!r} but this is an accelerate DeepSpeed launch ({ENV_USE_DEEPSPEED}=true, "
            "from launch/deepspeed_zero*.yaml): use strategy.name=deepspeed or auto, or launch with a DDP config "
            "(launch/cpu_2proc.yaml, launch/gpus_1node.yaml)"
        )
    precision = _launch_precision(precision, environ.get(ENV_MIXED_PRECISION))
    env = environ if ds_launch else {}
    if cfg.name == "deepspeed" or ds_launch:
        for key in ENV_OFFLOAD:
            if env.get(key, "none").strip().lower() not in ("none", ""):
                raise ConfigError(
                    f"{key}={env[key]!r} (offload in the accelerate launch config) is not supported by gandist: "
                    "set offload_optimizer_device and offload_param_device to none"
                )
        json_path = _agree(
            [
                ("key 'strategy.deepspeed_config'", cfg.deepspeed_config or None),
                (ENV_CONFIG_FILE, env.get(ENV_CONFIG_FILE)),
            ],
            "the DeepSpeed config file",
        )
        data = load_deepspeed_json(json_path) if json_path else {}
        where = f"file {json_path!r}"
        stage = _agree(
            [
                ("key 'strategy.zero_stage'", cfg.zero_stage),
                (ENV_ZERO_STAGE, _env_number(env, ENV_ZERO_STAGE, int)),
                (f"{where} 'zero_optimization.stage'", _json_number(data, "zero_optimization.stage")),
            ],
            "the ZeRO stage",
        )
        stage = DEFAULT_ZERO_STAGE if stage is None else stage
        if stage not in (0, 1, 2, 3):
            raise ConfigError(
                f"ZeRO stage must be 0, 1, 2 or 3, got {stage} (key 'strategy.zero_stage' / {ENV_ZERO_STAGE})"
            )
        accumulation = _agree(
            [
                ("key 'strategy.gradient_accumulation'", cfg.gradient_accumulation),
                (ENV_ACCUMULATION, _env_number(env, ENV_ACCUMULATION, int)),
                (f"{where} 'gradient_accumulation_steps'", _json_number(data, "gradient_accumulation_steps")),
            ],
            "gradient accumulation",
        )
        clip = _agree(
            [
                ("key 'strategy.grad_clip'", cfg.grad_clip),
                (ENV_CLIPPING, _env_number(env, ENV_CLIPPING, float)),
                (f"{where} 'gradient_clipping'", _json_number(data, "gradient_clipping")),
            ],
            "gradient clipping",
        )
        return StrategyPlan(
            name="deepspeed",
            precision=precision,
            zero_stage=stage,
            gradient_accumulation=int(accumulation or 1),
            grad_clip=float(clip or 0.0),
            deepspeed_json=data,
            deepspeed_json_path=json_path or "",
            source="accelerate DeepSpeed launch" if ds_launch else "gandist config",
            bucket_mb=cfg.bucket_mb,
        )
    name = cfg.name if cfg.name != "auto" else ("ddp" if world_size > 1 else "single")
    if name == "single" and world_size > 1:
        raise ConfigError(
            f"key 'strategy.name' = 'single' but {world_size} processes were launched: "
            "use strategy.name=ddp (or auto), or launch one process"
        )
    return StrategyPlan(
        name=name,
        precision=precision,
        gradient_accumulation=cfg.gradient_accumulation or 1,
        grad_clip=cfg.grad_clip or 0.0,
    )


def check_batch(global_batch: int, world_size: int, accumulation: int) -> None:
    """train.batch must split evenly into processes x micro-batches."""
    if global_batch % (world_size * accumulation):
        raise ConfigError(
            f"key 'train.batch' = {global_batch} must divide into {world_size} process(es) x {accumulation} "
            f"micro-batches (strategy.gradient_accumulation): use a multiple of {world_size * accumulation}"
        )


def _launch_precision(precision: str, launch_precision: str | None) -> str:
    """train.precision, or the accelerate launch config's mixed_precision when train.precision is auto."""
    launch = (launch_precision or "no").strip().lower()
    if launch in ("no", ""):
        return precision
    if launch not in ("bf16", "fp16"):
        raise ConfigError(
            f"{ENV_MIXED_PRECISION}={launch_precision!r} (mixed_precision of the accelerate launch config) is not "
            "supported: use no, bf16 or fp16"
        )
    if precision == "auto":
        return launch
    if precision != launch:
        raise ConfigError(
            f"key 'train.precision' = {precision!r} but the accelerate launch config has mixed_precision "
            f"{launch!r} ({ENV_MIXED_PRECISION}): make them agree, or set mixed_precision: 'no' in the launch config"
        )
    return precision
