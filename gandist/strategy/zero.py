"""DeepSpeed ZeRO 0-3 for both nets: one engine per net, stepping alternately.

What running DeepSpeed showed (docs/design.md), and this module follows:
- one `deepspeed.initialize` per net (torch Adam handed in, or the JSON's optimizer), never accelerate's
  multi-model DeepSpeed path (it steps only the first engine);
- in the G phase D is called through its raw module (`engine.module`) with requires_grad off: through the
  D engine, or with D trainable, ZeRO fails or leaks G's gradients into D;
- precision is torch autocast around fp32 engines (see zero_config.py); under fp16 each engine gets a
  dynamic loss scale of ours (LossScale): DeepSpeed's own `torch_autocast` GradScaler under ZeRO never
  lowers its scale after an overflow (DeepSpeed skips the step before the scaler sees it), so every
  later step would overflow too;
- every rank takes part in saving, and the two engines save to different folders (`ds_G/`, `ds_D/`).

Under ZeRO-3 each rank holds only a shard of each parameter: `gathered(name)` all-gathers them for
G_ema, sampling and checkpoints.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from gandist.config import ConfigError
from gandist.files import atomic_write
from gandist.loading import UnsafeFile, load_plain
from gandist.strategy import sharded_state, universal
from gandist.strategy.base import Strategy, _Net
from gandist.strategy.ema import ShardedEma
from gandist.strategy.launch import StrategyPlan
from gandist.strategy.zero_config import build_deepspeed_config

TAG = "state"  # DeepSpeed's checkpoint tag: one engine state per checkpoint folder
# the module's state in it: ZeRO-0/1/2 write one file, ZeRO-3 one per rank (buffers, which every rank saves alike)
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


class LossScale:
    """A dynamic fp16 loss scale for one engine, moved by torch GradScaler's rules.

    Under ZeRO 1-3 DeepSpeed's optimizer does the rest once given the scale (`override_loss_scale`): it
    multiplies the loss in backward, detects inf/NaN gradients from the all-reduced gradient norm (so every
    rank agrees), unscales and clips with it, and skips the step on overflow. Under ZeRO-0 the strategy
    does the same on the whole, all-reduced gradients. This only moves the scale: halve it after a skipped
    step, double it after `growth_interval` good steps in a row.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = init_scale
        self.growth_interval = growth_interval
        self.good_steps = 0

    def is_enabled(self) -> bool:
        """Whether the scale is in use (fp16)."""
        return self.enabled

    def get_scale(self) -> float:
        """The current scale."""
        return self.scale if self.enabled else 1.0

    def update(self, overflow: bool) -> None:
        """After an optimizer step: halve on overflow (the step was skipped), else count towards growth."""
        if overflow:
            self.scale, self.good_steps = max(self.scale * 0.5, 1.0), 0
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale, self.good_steps = self.scale * 2.0, 0

    def state_dict(self) -> dict:
        """What a checkpoint keeps."""
        return {"scale": self.scale, "good_steps": self.good_steps} if self.enabled else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore from state_dict()."""
        if state:
            self.scale, self.good_steps = state["scale"], state["good_steps"]


def _import_deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(
            f"strategy.name=deepspeed (or a DeepSpeed launch config) needs DeepSpeed, which is not installed ({e}): "
            "pip install 'gandist[deepspeed]'"
        ) from None
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


def _load_buffers(src: dict, dst: nn.Module) -> None:
    """Copy a saved module state's buffers into a module (DeepSpeed's custom_load_fn)."""
    buffers = dict(dst.named_buffers())
    missing = sorted(set(buffers) - set(src))
    if missing:
        raise RuntimeError(f"the saved module state has no buffers {missing}")
    with torch.no_grad():
        for key, buffer in buffers.items():
            buffer.copy_(src[key])


def _engine_record_types() -> tuple:
    """The record types DeepSpeed writes into its checkpoint files besides plain data."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return (LossScaler, ZeroStageEnum, fragment_address)


def _partitioned(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The ZeRO-3 parameters among `params` that are not gathered now."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return [p for p in params if p.ds_status != ZeroParamStatus.AVAILABLE]


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
        base_config = dict(self.plan.deepspeed_json)
        if self.zero_stage == 0:  # ZeRO-0 clips in _unscale_whole_gradients (DeepSpeed's clip fails on skipped steps)
            base_config.pop("gradient_clipping", None)
        config = build_deepspeed_config(
            base_config,
            source=f"file {self.plan.deepspeed_json_path!r}" if self.plan.deepspeed_json_path else "",
            zero_stage=self.zero_stage,
            micro_batch=self.micro_batch,
            accumulation=self.accumulation,
            world_size=self.world_size,
            grad_clip=self.grad_clip if self.zero_stage > 0 else 0.0,
            optimizer_defaults={k: group[k] for k in ("lr", "betas", "eps", "weight_decay") if k in group},
            bucket_mb=self.plan.bucket_mb,
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
        self.nets[name] = _Net(engine.module, engine, base, LossScale(enabled=self.precision == "fp16"))

    def compile(self, backend: str) -> None:
        """torch.compile the engines' forwards (ZeRO 0-2); ZeRO-3 gathers parameters in module hooks during the
        forward, which gandist has not run under torch.compile: refused."""
        if self.zero_stage == 3:
            raise ConfigError(
                "key 'train.compile' = true is not supported under DeepSpeed ZeRO-3 (its forward gathers parameters "
                "in module hooks): use train.compile=false, or ZeRO stage 0-2"
            )
        super().compile(backend)

    def backward(self, name: str, loss: torch.Tensor) -> None:
        """engine.backward for one micro-batch of the open optimizer step (DeepSpeed divides by the accumulation).

        DeepSpeed counts micro-batches itself: engine.step() follows every backward but the last one, which
        step() closes; the phase feeding exactly `accumulation` micro-batches keeps both counts in line.
        """
        engine, net = self.engines[name], self._feed(name, loss)
        last = net.micro_steps == self.accumulation
        if engine.is_gradient_accumulation_boundary() != last:
            raise RuntimeError(f"{name}: DeepSpeed's micro-batch count is out of step with gandist's")
        scale: LossScale = net.scaler
        if scale.is_enabled() and self.zero_stage > 0:
            engine.optimizer.override_loss_scale(scale.get_scale())
        elif scale.is_enabled():
            loss = loss * scale.get_scale()
        engine.backward(loss)
        if not last:
            engine.step()  # not a boundary: DeepSpeed only counts the micro-batch

    def step(self, name: str, guard: bool = False) -> dict[str, torch.Tensor]:
        """Close the open optimizer step: engine.step() at the accumulation boundary.

        Returns the gradient norm (unscaled, before clipping), under fp16 whether the step was skipped for
        inf/NaN gradients, and with `guard` "nonfinite": 1 when a loss or gradient was not finite on any rank
        (every rank then skipped the step). Under ZeRO 1-3 DeepSpeed skips a step with a non-finite global
        gradient norm by itself, guard or not.
        """
        engine, net = self.engines[name], self._close(name)
        scale: LossScale = net.scaler
        norm, overflow = None, False
        if self.zero_stage == 0:
            norm, overflow = self._unscale_whole_gradients(engine, scale, check=guard or scale.is_enabled())
        engine.step()
        out: dict[str, torch.Tensor] = {}
        if self.zero_stage > 0:
            norm = engine.get_global_grad_norm()
            overflow = not engine.was_step_applied()
        if norm is not None:
            out["grad_norm"] = torch.as_tensor(norm, dtype=torch.float32).to(self.device)
        if scale.is_enabled():
            scale.update(overflow)
            out["skipped"] = torch.tensor(float(overflow), device=self.device)
        if guard:
            out["nonfinite"] = self._nonfinite(net, overflow)
        net.losses.clear()
        return out

    def _release_wrappers(self) -> None:
        self.engines.clear()  # the engines hold the process group too
        super()._release_wrappers()

    def _unscale_whole_gradients(self, engine, scale: LossScale, check: bool) -> tuple[torch.Tensor | None, bool]:
        """ZeRO-0: unscale and clip the all-reduced (identical on every rank) gradients, as DDP does; with
        `check`, drop them on inf/NaN, so that the engine's optimizer step leaves parameters and Adam's
        state as they are."""
        params = [p for p in engine.module.parameters() if p.grad is not None]
        if not params:
            return None, False
        grads = [p.grad for p in params]
        if scale.is_enabled():
            torch._foreach_mul_(grads, 1.0 / scale.get_scale())
        norm = torch.nn.utils.get_total_norm(grads)
        overflow = check and not bool(torch.isfinite(norm))
        if overflow:
            for p in params:
                p.grad = None
        elif self.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        return norm, overflow

    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[nn.Module]:
        """Yield the module with full parameters; under ZeRO-3 every rank must enter (an all-gather)."""
        module = self.nets[name].module
        if self.zero_stage != 3:
            yield module
            return
        params = _partitioned(list(module.parameters()))  # whole ones stay as they are
        with self.deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=bool(params)):
            yield module

    def add_ema(self, name: str, source: str) -> None:
        """G_ema of G: under ZeRO-3 this rank's partitions of G's parameters (ema.ShardedEma), else a full copy."""
        if self.zero_stage != 3:
            super().add_ema(name, source)
            return
        self.emas[name] = ShardedEma(self.nets[source].module, release=self.engines[source].empty_partition_cache)

    @property
    def collective_ema(self) -> bool:
        """Under ZeRO-3 G_ema runs on G's module, whose layers gather their partitions: a collective."""
        return self.zero_stage == 3

    def _gathered_parameter(self, p: nn.Parameter) -> contextlib.AbstractContextManager:
        """Under ZeRO-3 one partitioned parameter gathered (persistent ones are whole already: gathering them
        would partition them on exit)."""
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        return self.deepspeed.zero.GatheredParameters(
            _partitioned([p]), modifier_rank=None, enabled=bool(_partitioned([p]))
        )

    def _sync_all_buffers(self) -> None:
        if self.zero_stage != 3:
            super()._sync_all_buffers()
            return
        for net in self.nets.values():
            self.sync_buffers(net.module)
        for buffer in (b for ema in self.emas.values() for b in ema.buffers) if self.world_size > 1 else ():
            torch.distributed.broadcast(buffer, src=0)

    def checkpoint_state(self) -> dict:
        """What state.pt holds for the nets (every rank must call it): full G, D, G_ema at ZeRO 0-2 (on rank 0);
        under ZeRO-3 nothing is gathered: each rank writes its partitions (save_engine_states) and state.pt
        names them. Optimizer and loss-scale states are sharded: the engines write them."""
        self._sync_all_buffers()
        state: dict = {}
        if self.zero_stage == 3:
            state["partitioned"] = {"nets": [*self.nets, *self.emas], "world_size": self.world_size}
        elif self.is_main:
            modules = {name: net.module for name, net in self.nets.items()}
            modules.update({name: ema.module for name, ema in self.emas.items()})
            for name, module in modules.items():
                state[name] = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
        for name, net in self.nets.items():
            state[f"scaler_{name}"] = net.scaler.state_dict()  # DeepSpeed's checkpoint does not hold our scale
        state["strategy"] = {"name": "deepspeed", "zero_stage": self.zero_stage, "world_size": self.world_size}
        return state

    def save_engine_states(self, folder: Path) -> None:
        """Every rank writes its shards: engine G to folder/ds_G, engine D to folder/ds_D, and under ZeRO-3 its
        partitions of G, D and G_ema to folder/nets-rank-R.pt (sharded_state.py)."""
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(Path(folder) / f"ds_{name}"), tag=TAG, save_latest=False)
        if self.zero_stage == 3:
            nets = {name: sharded_state.net_entry_of(net.module) for name, net in self.nets.items()}
            nets.update({name: sharded_state.ema_entry(ema) for name, ema in self.emas.items()})
            state = sharded_state.rank_state(self.rank, self.world_size, nets)
            atomic_write(sharded_state.rank_file(folder, self.rank), lambda tmp: torch.save(state, tmp), durable=True)

    def _check_engine_files(self, folder: Path) -> None:
        """Refuse engine files that hold more than plain data and DeepSpeed's own record types: DeepSpeed reads
        them with a full unpickler, which would run code from a file that came from elsewhere."""
        for file in sorted(folder.glob("ds_*/**/*.pt")):
            try:
                load_plain(file, safe_types=_engine_record_types())
            except UnsafeFile as e:
                raise ConfigError(f"checkpoint {folder}: {e}; do not resume from it") from None

    def _convert_to_universal(self, folder: Path, scratch: Path) -> None:
        """Rank 0 converts the engine states; every rank learns whether it worked (no rank waits on a failure)."""
        error = None
        if self.is_main:
            try:
                universal.convert(folder, self.engines, TAG, scratch)
            except Exception as e:  # noqa: BLE001 - said on every rank below
                error = str(e)
        error = self.broadcast_object(error)
        if error is not None:
            raise ConfigError(error)

    def load_state(self, folder: Path, shared: dict) -> None:
        """Restore both engines (weights, optimizer shards, loss scales) from folder/ds_G and folder/ds_D; a ZeRO
        checkpoint of another world size goes through DeepSpeed's universal checkpoint (universal.py)."""
        folder = Path(folder)
        saved_world = shared.get("world_size", self.world_size)
        self._check_engine_files(folder)
        for name in self.engines:
            if not (folder / f"ds_{name}" / TAG).is_dir():
                written_by = shared.get("strategy", {}).get("name", "ddp or single")
                raise ConfigError(
                    f"checkpoint {folder} has no DeepSpeed state for {name} ({folder / f'ds_{name}' / TAG} missing; "
                    f"written by {written_by}): resume it with the strategy that wrote it, or start a new run "
                    "(resume=never)"
                )
        source, reading = folder, contextlib.nullcontext()
        if saved_world != self.world_size and self.zero_stage > 0:
            source, reading = universal.scratch_folder(folder), universal.loading(self.engines.values())
            self._convert_to_universal(folder, source)
        with reading:
            for name, engine in self.engines.items():
                load_path, _ = engine.load_checkpoint(
                    str(source / f"ds_{name}"),
                    tag=TAG,
                    load_lr_scheduler_states=False,
                    # ZeRO-3: parameters come from the optimizer's fp32 partitions; DeepSpeed's own module load
                    # would refuse the parameters it keeps whole (saved whole, partitioned at load): buffers only
                    custom_load_fn=_load_buffers if self.zero_stage == 3 else None,
                )
                if load_path is None:
                    raise RuntimeError(f"DeepSpeed could not load {source / f'ds_{name}' / TAG} for {name}")
                if shared.get(f"scaler_{name}"):
                    self.nets[name].scaler.load_state_dict(shared[f"scaler_{name}"])
        if source != folder:  # DeepSpeed's universal load restores parameters and optimizer states, not buffers
            for name in self.engines:
                file = next(f for f in (folder / f"ds_{name}" / TAG / n for n in MODEL_STATES) if f.is_file())
                saved = load_plain(file, _engine_record_types(), mmap=True)
                _load_buffers(saved["module"], self.nets[name].module)
            self.barrier()
            if self.is_main:
                shutil.rmtree(source.parent, ignore_errors=True)
        for name, ema in self.emas.items():
            if isinstance(ema, ShardedEma):
                sharded_state.load_ema(ema, folder, shared, name, self.rank, self.world_size)
            elif name in shared:
                ema.module.load_state_dict(shared[name])
            else:
                raise ConfigError(
                    f"checkpoint {folder} keeps {name} partitioned over {saved_world} ranks (written under ZeRO-3): "
                    "resume it with strategy.zero_stage=3"
                )
