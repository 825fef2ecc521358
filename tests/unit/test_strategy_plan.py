"""Choosing the strategy from gandist's config and the launcher's environment, and DeepSpeed's config."""

import json
from pathlib import Path

import pytest
import torch

from gandist.config import ConfigError, StrategyConfig, load_config
from gandist.strategy import check_batch, plan_strategy, resolve_precision
from gandist.strategy.zero_config import build_deepspeed_config

ROOT = Path(__file__).resolve().parents[2]
DS_LAUNCH = {
    "ACCELERATE_USE_DEEPSPEED": "true",
    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
    "ACCELERATE_MIXED_PRECISION": "no",
}


def test_auto_picks_single_ddp_or_the_deepspeed_launch():
    assert plan_strategy(StrategyConfig(), "auto", 1, {}).name == "single"
    assert plan_strategy(StrategyConfig(), "auto", 2, {}).name == "ddp"
    plan = plan_strategy(StrategyConfig(), "fp32", 2, DS_LAUNCH)
    assert (plan.name, plan.zero_stage, plan.source) == ("deepspeed", 3, "accelerate DeepSpeed launch")


def test_gandist_config_selects_deepspeed_under_any_launch():
    plan = plan_strategy(StrategyConfig(name="deepspeed", zero_stage=1), "bf16", 2, {})
    assert (plan.name, plan.zero_stage, plan.precision, plan.source) == ("deepspeed", 1, "bf16", "gandist config")
    assert plan_strategy(StrategyConfig(name="deepspeed"), "fp32", 2, {}).zero_stage == 2  # the default


def test_values_given_twice_must_agree():
    with pytest.raises(
        ConfigError, match=r"ZeRO stage.*'strategy.zero_stage' = 2.*ACCELERATE_DEEPSPEED_ZERO_STAGE = 3"
    ):
        plan_strategy(StrategyConfig(zero_stage=2), "fp32", 2, DS_LAUNCH)
    assert plan_strategy(StrategyConfig(zero_stage=3), "fp32", 2, DS_LAUNCH).zero_stage == 3
    env = {**DS_LAUNCH, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4", "ACCELERATE_GRADIENT_CLIPPING": "none"}
    plan = plan_strategy(StrategyConfig(), "fp32", 2, env)
    assert (plan.gradient_accumulation, plan.grad_clip) == (4, 0.0)
    with pytest.raises(ConfigError, match="gradient accumulation"):
        plan_strategy(StrategyConfig(gradient_accumulation=2), "fp32", 2, env)


def test_ddp_under_a_deepspeed_launch_and_offload_are_refused():
    with pytest.raises(ConfigError, match=r"'strategy.name' = 'ddp'.*DeepSpeed launch"):
        plan_strategy(StrategyConfig(name="ddp"), "fp32", 2, DS_LAUNCH)
    env = {**DS_LAUNCH, "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}
    with pytest.raises(ConfigError, match="OFFLOAD_OPTIMIZER_DEVICE='cpu'.*not supported"):
        plan_strategy(StrategyConfig(), "fp32", 2, env)
    with pytest.raises(ConfigError, match="'single' but 2 processes"):
        plan_strategy(StrategyConfig(name="single"), "fp32", 2, {})


def test_launch_mixed_precision_sets_auto_and_must_agree_with_train_precision():
    env = {**DS_LAUNCH, "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert plan_strategy(StrategyConfig(), "auto", 2, env).precision == "bf16"
    with pytest.raises(ConfigError, match=r"'train.precision' = 'fp32'.*mixed_precision 'bf16'"):
        plan_strategy(StrategyConfig(), "fp32", 2, env)


def test_deepspeed_json_is_read_and_checked(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}))
    plan = plan_strategy(StrategyConfig(name="deepspeed", deepspeed_config=str(path)), "fp32", 2, {})
    assert (plan.zero_stage, plan.grad_clip, plan.deepspeed_json_path) == (1, 1.0, str(path))
    with pytest.raises(ConfigError, match=rf"'strategy.zero_stage' = 3.*{path.name}.*'zero_optimization.stage' = 1"):
        plan_strategy(StrategyConfig(name="deepspeed", zero_stage=3, deepspeed_config=str(path)), "fp32", 2, {})
    with pytest.raises(ConfigError, match="does not exist"):
        plan_strategy(StrategyConfig(name="deepspeed", deepspeed_config=str(tmp_path / "nope.json")), "fp32", 2, {})
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        plan_strategy(StrategyConfig(name="deepspeed", deepspeed_config=str(path)), "fp32", 2, {})


def test_bad_strategy_keys_name_the_key():
    for override, match in [
        ("strategy.zero_stage=4", "'strategy.zero_stage' must be 0, 1, 2 or 3"),
        ("strategy.gradient_accumulation=0", "'strategy.gradient_accumulation' must be >= 1"),
        ("strategy.grad_clip=-1", "'strategy.grad_clip' must be >= 0"),
        ("strategy.name=fsdp", "'strategy.name' must be one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="needs strategy.name=deepspeed"):
        load_config(None, ["strategy.name=ddp", "strategy.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"'train.batch' = 30 must divide into 2 process\(es\) x 4 micro-batches"):
        check_batch(30, 2, 4)
    check_batch(32, 2, 4)


def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="'train.precision' = 'fp16' needs a CUDA GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def _build(base: dict, **kw) -> dict:
    args = dict(source="test.json", zero_stage=2, micro_batch=8, accumulation=2, world_size=4, grad_clip=0.0)
    return build_deepspeed_config(base, **{**args, **kw})


def test_generated_config_carries_gandist_settings():
    cfg = _build({}, grad_clip=1.5)
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["train_batch_size"] == 64 and cfg["gradient_clipping"] == 1.5
    assert cfg["zero_optimization"]["stage"] == 2
    assert "fp16" not in cfg and "bf16" not in cfg and "torch_autocast" not in cfg  # engines stay fp32


def test_json_values_conflicting_with_gandist_are_errors():
    with pytest.raises(ConfigError, match=r"test.json: 'train_micro_batch_size_per_gpu' = 16 .* 8"):
        _build({"train_micro_batch_size_per_gpu": 16})
    with pytest.raises(ConfigError, match="'bf16.enabled' is true.*BatchNorm"):
        _build({"bf16": {"enabled": True}})
    with pytest.raises(ConfigError, match="'scheduler' section"):
        _build({"scheduler": {"type": "WarmupLR"}})
    assert "fp16" not in _build({"fp16": {"enabled": "auto"}})  # HF-style templates: dropped, not an error


@pytest.mark.parametrize("name", ["zero2.json", "zero3.json", "zero2_fused_adam.json"])
def test_shipped_json_configs_build(name):
    path = ROOT / "launch/deepspeed" / name
    plan = plan_strategy(StrategyConfig(name="deepspeed", deepspeed_config=str(path)), "fp32", 2, {})
    defaults = {"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0.0}
    cfg = _build(plan.deepspeed_json, zero_stage=plan.zero_stage, optimizer_defaults=defaults)
    assert cfg["zero_optimization"]["stage"] == plan.zero_stage == int(name[4])
    assert "auto" not in json.dumps(cfg)
    if "optimizer" in cfg:
        assert cfg["optimizer"]["params"] == {**defaults, "betas": [0.5, 0.999], "adam_w_mode": False}
