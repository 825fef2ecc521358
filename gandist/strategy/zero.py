"""DeepSpeed ZeRO 0-3 for both nets: one engine per net, stepping alternately.

What shared/DESIGN.md found by running it, and this module follows:
- one `deepspeed.initialize` per net (torch Adam handed in, or the JSON's optimizer), never accelerate's
  multi-model DeepSpeed path (it steps only the first engine);
- in the G phase D is called through its raw module (`engine.module`) with requires_grad off: through the
  D engine, or with D trainable, ZeRO fails or leaks G's gradients into D;
- precision is torch autocast around fp32 engines (see zero_config.py);
- every rank takes part in saving, and the two engines save to different folders (`ds_G/`, `ds_D/`).

Under ZeRO-3 each rank holds only a shard of each parameter: `gathered(name)` all-gathers them for
G_ema, sampling and checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from gandist.config import ConfigError
from gandist.strategy.base import Strategy, _Net
from gandist.strategy.launch import StrategyPlan
from gandist.strategy.zero_config import build_deepspeed_config

TAG = "state"  # DeepSpeed's checkpoint tag: one engine state per checkpoint folder


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(f"strategy.name=deepspeed needs the deepspeed package ({e}): pip install deepspeed") from None
    return deepspeed


def _ensure_process_group(device: torch.device, timeout_s: int) -> None:
    """DeepSpeed needs a process group even for one process: create a one-rank group if none exists."""
    if torch.distributed.is_initialized():
        return
    # what a launcher would have set: DeepSpeed's engine insists on LOCAL_RANK
    for key, value in (("LOCAL_RANK", "0"), ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


class ZeroStrategy(Strategy):
    """G and D each in their own DeepSpeed engine at ZeRO stage `plan.zero_stage`."""

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator, plan: StrategyPlan, global_batch: int, timeout_s: int = 600):
        super().__init__(accelerator, plan.precision, plan.gradient_accumulation, plan.grad_clip)
        self.deepspeed = _import_deepspeed()
        self.plan = plan
        self.name = "deepspeed"
        self.zero_stage = plan.zero_stage
        self.micro_batch = global_batch // (self.world_size * self.accumulation)
        self.engines: dict = {}
        _ensure_process_group(self.device, timeout_s)

    def describe(self) -> str:
        """One line for the start-up message."""
        extra = f", {self.accumulation} micro-batches per step" if self.accumulation > 1 else ""
        return f"deepspeed ZeRO-{self.zero_stage} (from the {self.plan.source}){extra}"

    def add(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Build this net's engine; its optimizer is the one handed in unless the JSON defines one."""
        group = optimizer.param_groups[0]
        config = build_deepspeed_config(
            self.plan.deepspeed_json,
            source=f"file {self.plan.deepspeed_json_path!r}" if self.plan.deepspeed_json_path else "",
            zero_stage=self.zero_stage,
            micro_batch=self.micro_batch,
            accumulation=self.accumulation,
            world_size=self.world_size,
            grad_clip=self.grad_clip,
            precision=self.precision,
            optimizer_defaults={k: group[k] for k in ("lr", "betas", "eps", "weight_decay") if k in group},
        )
        own_optimizer = "optimizer" in config
        engine, ds_optimizer, _, _ = self.deepspeed.initialize(
            model=module,
            optimizer=None if own_optimizer else optimizer,
            model_parameters=module.parameters() if own_optimizer else None,
            config=config,
            dist_init_required=False,
        )
        self.engines[name] = engine
        # the torch optimizer that holds param_groups (under ZeRO, DeepSpeed's wrapper keeps it as .optimizer)
        base = getattr(ds_optimizer, "optimizer", ds_optimizer) if own_optimizer else optimizer
        self.nets[name] = _Net(engine.module, engine, base, self._grad_scaler(engine))

    def _grad_scaler(self, engine) -> torch.amp.GradScaler:
        """The engine's fp16 loss scaler (DeepSpeed's torch_autocast GradScaler), or a disabled one."""
        scaler = getattr(engine, "torch_autocast_z0_gradscaler", None)
        scaler = scaler or getattr(engine.optimizer, "torch_autocast_gradscaler", None)
        return scaler or torch.amp.GradScaler(self.device.type, enabled=False)

    def backward_and_step(self, name: str, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """engine.backward + engine.step for one micro-batch; DeepSpeed steps after the last one of a step.

        Returns, on the micro-batch that stepped: the gradient norm (when DeepSpeed computed one) and,
        under fp16, whether the engine's loss scaler skipped the step.
        """
        engine = self.engines[name]
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(loss)
        scaler = self.nets[name].scaler
        scale_before = scaler._scale.clone() if boundary and scaler.is_enabled() and scaler._scale is not None else None
        norm = None
        if boundary and self.zero_stage == 0:  # DeepSpeed reports no norm without ZeRO: the all-reduced grads are whole
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else None
            if norm is not None and scale_before is not None:
                norm = norm / scale_before
        engine.step()
        if not boundary:
            return {}
        out: dict[str, torch.Tensor] = {}
        norm = engine.get_global_grad_norm() if norm is None else norm
        if norm is not None:
            out["grad_norm"] = torch.as_tensor(norm, dtype=torch.float32).to(self.device)
        if scale_before is not None:
            out["skipped"] = (scaler._scale < scale_before).float()
        return out

    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[nn.Module]:
        """Yield the module with full parameters; under ZeRO-3 every rank must enter (an all-gather)."""
        module = self.nets[name].module
        if self.zero_stage != 3:
            yield module
            return
        with self.deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            yield module

    def checkpoint_state(self) -> dict:
        """Full state dicts 'G', 'D' (gathered under ZeRO-3; every rank must call it) and what wrote them.

        Optimizer and loss-scaler states are sharded: the engines write them (save_engine_states).
        """
        state: dict = {}
        for name in self.nets:
            with self.gathered(name) as module:
                if self.is_main:
                    state[name] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        state["strategy"] = {"name": "deepspeed", "zero_stage": self.zero_stage, "world_size": self.world_size}
        return state

    def save_engine_states(self, folder: Path) -> None:
        """Every rank writes its shards: engine G to folder/ds_G, engine D to folder/ds_D."""
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(Path(folder) / f"ds_{name}"), tag=TAG, save_latest=False)

    def load_state(self, folder: Path, shared: dict) -> None:
        """Restore both engines (weights, optimizer shards, loss scales) from folder/ds_G and folder/ds_D."""
        for name, engine in self.engines.items():
            path = Path(folder) / f"ds_{name}"
            if not (path / TAG).is_dir():
                written_by = shared.get("strategy", {}).get("name", "ddp or single")
                raise ConfigError(
                    f"checkpoint {folder} has no DeepSpeed state for {name} ({path / TAG} missing; written by "
                    f"{written_by}): resume it with the strategy that wrote it, or start a new run (resume=never)"
                )
            load_path, _ = engine.load_checkpoint(str(path), tag=TAG, load_lr_scheduler_states=False)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load {path / TAG} for {name}")
