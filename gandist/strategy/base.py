"""The Accelerator set-up and the base Strategy: one process or DDP (DeepSpeed ZeRO is in zero.py).

The training loop never touches DDP wrappers, scalers or optimizers directly. It asks:

    strategy.train_forward("G")      the callable that trains G (DDP wrapper: gradients are all-reduced;
                                     compiled with train.compile, see compile())
    strategy.frozen("D")             D's raw module with requires_grad off, for the G phase
    strategy.backward("D", loss)     backward one micro-batch of the open optimizer step of D
    strategy.step("D")               close it: clip, step the optimizer, clear the gradients
    strategy.gathered("G")           the module with full parameters (sampling, digests)
    strategy.add_ema("G_ema", "G") / update_ema("G_ema", beta) / ema("G_ema")   G_ema, held as G is (ema.py)
    strategy.digest("G")             a checksum of a net's (or G_ema's) full weights, the same on every rank
    strategy.checkpoint_state() / save_engine_states(folder) / load_state(folder, shared)
    strategy.reduce_mean / reduce_max / all_ok / broadcast_object / gather_objects / all_gather_rows / barrier

Precision is torch autocast with fp32 master weights and one GradScaler per net for fp16, so the
same numerics hold for every strategy (DeepSpeed's half-precision cast breaks BatchNorm nets: see
docs/design.md). Models stay plain single-device modules; distribution is applied here.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs
from torch import nn

from gandist.config import ConfigError, StrategyConfig
from gandist.strategy.ema import FullEma
from gandist.strategy.launch import ENV_USE_DEEPSPEED

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_accelerator(
    cfg: StrategyConfig, log_with: list[str] | None = None, logging_dir: str | None = None
) -> Accelerator:
    """Create the Accelerator (process group, device, trackers) and check that the launch is what it seems.

    Without CUDA the processes are put on the CPU with gloo: `accelerate launch` of a multi-process
    config then forms a real multi-rank group (accelerate's own MULTI_CPU starts one process).
    `log_with` and `logging_dir` go to accelerate's tracker API (gandist/reporting/trackers.py starts them).
    """
    cuda = torch.cuda.is_available()
    # gradients as views into DDP's all-reduce buckets: the buckets are the gradients' memory, not a second copy
    handlers = [DistributedDataParallelKwargs(broadcast_buffers=True, gradient_as_bucket_view=True)]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        timeout = datetime.timedelta(seconds=cfg.timeout_s)
        handlers.append(InitProcessGroupKwargs(backend="nccl" if cuda else "gloo", timeout=timeout))
    # gandist builds its own DeepSpeed engines (zero.py): accelerate must not switch to its DeepSpeed mode
    # under an accelerate DeepSpeed launch, so it sets up the same plain process group either way.
    use_deepspeed = os.environ.pop(ENV_USE_DEEPSPEED, None)
    try:
        accelerator = Accelerator(
            cpu=not cuda,
            mixed_precision="no",  # autocast and scalers are ours: one scaler per net
            kwargs_handlers=handlers,
            log_with=log_with or None,
            project_dir=logging_dir,
        )
    finally:
        if use_deepspeed is not None:
            os.environ[ENV_USE_DEEPSPEED] = use_deepspeed
    env_world = os.environ.get("WORLD_SIZE")
    if env_world is not None and int(env_world) != accelerator.num_processes:
        raise RuntimeError(
            f"WORLD_SIZE={env_world} in the environment but the process group has {accelerator.num_processes} "
            "process(es): the launcher and accelerate disagree (see launch/README.md for working launch commands)"
        )
    return accelerator


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn 'auto' into a concrete precision and refuse what the device cannot do."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"key 'train.precision' = 'fp16' needs a CUDA GPU (device here: {device.type}); "
            "fp16 autocast on CPU is silently fp32. Use fp32 or bf16."
        )
    return precision


@dataclass
class _Net:
    module: nn.Module
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    micro_steps: int = 0  # micro-batches fed to the open optimizer step
    losses: list[torch.Tensor] = field(default_factory=list)  # their detached losses (the non-finite guard)
    compiled: nn.Module | None = None  # torch.compile of `wrapped` (train.compile)
    compiled_module: nn.Module | None = None  # torch.compile of `module`, for frozen()


class Strategy:
    """Single process or DDP through Accelerate, with per-net autocast scalers.

    An optimizer step of a net is explicit: a phase feeds its `accumulation` micro-batches through
    backward() (each adds loss / accumulation to the gradients) and closes the step with step();
    `grad_clip` > 0 clips each net's gradient norm there.
    """

    name = "ddp"

    def __init__(self, accelerator: Accelerator, precision: str, accumulation: int = 1, grad_clip: float = 0.0):
        self.accelerator = accelerator
        self.device = accelerator.device
        self.precision = resolve_precision(precision, self.device)
        self.dtype = PRECISIONS[self.precision]
        self.accumulation = accumulation
        self.grad_clip = grad_clip
        self.nets: dict[str, _Net] = {}
        self.emas: dict[str, FullEma] = {}
        if self.world_size == 1:
            self.name = "single"
        self._cpu_group = None  # collectives on host values (votes, flags): gloo, never a device sync
        if self.world_size > 1 and torch.distributed.get_backend() != "gloo":
            self._cpu_group = torch.distributed.new_group(backend="gloo")

    def describe(self) -> str:
        """One line for the start-up message."""
        extra = f", {self.accumulation} micro-batches per step" if self.accumulation > 1 else ""
        return f"{self.name}{extra}"

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def add(self, name: str, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Register a net with its optimizer; it is moved to the device and wrapped for distribution."""
        wrapped = self.accelerator.prepare_model(module)  # moves in place: the optimizer's params stay valid
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # `module` is the plain module inside the wrapper: accelerator.unwrap_model would import DeepSpeed
        # whenever it is installed, which prints a warning on every rank of a run that does not use it
        self.nets[name] = _Net(module, wrapped, optimizer, scaler)

    def module(self, name: str) -> nn.Module:
        """The plain module (no wrapper)."""
        return self.nets[name].module

    def add_ema(self, name: str, source: str) -> None:
        """Register an exponential moving average of net `source`'s weights (G_ema of G), held as `source` is."""
        self.emas[name] = FullEma(self.nets[source].module)

    @property
    def collective_ema(self) -> bool:
        """Whether running an EMA is a collective (ZeRO-3): then every rank makes the same G_ema calls."""
        return False

    def update_ema(self, name: str, beta: float) -> None:
        """One EMA step: average <- beta * average + (1 - beta) * source; buffers copied. Local on every rank."""
        self.emas[name].update(beta)

    @contextlib.contextmanager
    def ema(self, name: str) -> Iterator[nn.Module]:
        """The averaged net as a module to run, gradients off. A collective under ZeRO-3: every rank must enter
        and make the same forward calls."""
        with self.emas[name].using() as module:
            yield module

    def full_parameters(self, name: str) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) of every parameter of a net or an EMA, one at a time: under ZeRO-3 each is
        gathered while it is yielded (a collective), so use or copy it before asking for the next."""
        with contextlib.ExitStack() as stack:
            module = stack.enter_context(self.ema(name)) if name in self.emas else self.nets[name].module
            for pname, p in module.named_parameters():
                with self._gathered_parameter(p):
                    yield pname, p.detach()

    def _gathered_parameter(self, p: nn.Parameter) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def digest(self, name: str) -> str:
        """SHA-256 (16 hex digits) of a net's or an EMA's full parameters and buffers; a collective under ZeRO-3
        (parameters gathered one at a time)."""
        h = hashlib.sha256()
        for pname, p in self.full_parameters(name):
            digest_update(h, pname, p)
        with contextlib.ExitStack() as stack:
            module = stack.enter_context(self.ema(name)) if name in self.emas else self.nets[name].module
            for bname, b in module.named_buffers():
                digest_update(h, bname, b)
        return h.hexdigest()[:16]

    def optimizer(self, name: str) -> torch.optim.Optimizer:
        """The net's optimizer (its param_groups hold the learning rate)."""
        return self.nets[name].optimizer

    def scaler(self, name: str) -> torch.amp.GradScaler:
        """The net's fp16 loss scaler (disabled at other precisions)."""
        return self.nets[name].scaler

    def train_forward(self, name: str, eager: bool = False) -> nn.Module:
        """The callable to use when this net's parameters are being trained (gradients synchronised).

        Compiled after compile(), unless `eager`: a double backward (R1, gradient penalty) needs the eager one.
        """
        net = self.nets[name]
        return net.wrapped if eager or net.compiled is None else net.compiled

    @property
    def compiled(self) -> bool:
        """Whether the training forwards are compiled (compile() was called and eager() was not)."""
        return any(net.compiled is not None for net in self.nets.values())

    def compile(self, backend: str) -> None:
        """torch.compile every net's training forward and its frozen raw module (train.compile).

        The compiled callables wrap the plain modules, which stay as they are: checkpoints keep their keys
        (a compiled module's own state_dict would prefix them with `_orig_mod.`), G_ema stays eager.
        Compilation happens at the first call: see fastpath.first_step_or_eager for the fallback.
        """
        known = torch._dynamo.list_backends(exclude_tags=())
        if isinstance(backend, str) and backend not in known:
            raise ConfigError(f"key 'train.compile_backend' = {backend!r} is not a torch.compile backend: use inductor")
        for net in self.nets.values():
            net.compiled = torch.compile(net.wrapped, backend=backend)
            unwrapped = net.wrapped is net.module  # one process: no DDP wrapper
            net.compiled_module = net.compiled if unwrapped else torch.compile(net.module, backend=backend)

    def eager(self) -> None:
        """Drop the compiled forwards and whatever a failed compiled step left behind (gradients, guard flags)."""
        for net in self.nets.values():
            net.compiled = net.compiled_module = None
            net.micro_steps = 0
            net.losses.clear()
            net.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def frozen(self, name: str):
        """Yield the raw module with requires_grad off: gradients flow through it to its inputs only.

        Used for D in the G phase: D collects no gradients and no DDP hook fires for it.
        """
        net = self.nets[name]
        module = net.module
        module.requires_grad_(False)
        try:
            yield module if net.compiled_module is None else net.compiled_module
        finally:
            module.requires_grad_(True)

    def autocast(self):
        """Autocast context for forward passes at the run's precision."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def backward(self, name: str, loss: torch.Tensor) -> None:
        """Backward one micro-batch's loss into the open optimizer step of this net (loss / accumulation)."""
        net = self._feed(name, loss)
        # DDP all-reduces at every micro-batch here: the same sum as accumulating locally, with simpler code.
        net.scaler.scale(loss / self.accumulation).backward()

    def _feed(self, name: str, loss: torch.Tensor) -> _Net:
        net = self.nets[name]
        if net.micro_steps == self.accumulation:
            raise RuntimeError(f"{name}: more than {self.accumulation} micro-batches fed to one optimizer step")
        net.micro_steps += 1
        net.losses.append(loss.detach())
        return net

    def _close(self, name: str) -> _Net:
        net = self.nets[name]
        if net.micro_steps != self.accumulation:
            raise RuntimeError(
                f"{name}: an optimizer step needs {self.accumulation} micro-batches "
                f"(strategy.gradient_accumulation), got {net.micro_steps}"
            )
        net.micro_steps = 0
        return net

    def _nonfinite(self, net: _Net, bad_gradient: torch.Tensor | bool) -> torch.Tensor:
        """1 on every rank if a loss of this step was not finite, or `bad_gradient`, on any rank (a host tensor:
        the guard's one all-reduce and host sync)."""
        bad = ~torch.isfinite(torch.stack(net.losses).float()).all() | torch.as_tensor(bad_gradient, device=self.device)
        return self.reduce_max(bad.float().reshape(1))[0].cpu()

    def step(self, name: str, guard: bool = False) -> dict[str, torch.Tensor]:
        """Close the open optimizer step of this net after all its micro-batches: unscale, clip, step, clear.

        Returns device tensors: the gradient norm (unscaled, before clipping) and, under fp16, whether the
        scaler skipped the step (inf/NaN gradients). With `guard`, a loss or gradient that is not finite on
        ANY rank makes every rank skip the step ("nonfinite" is then 1, a host tensor: reading it costs nothing
        more); this costs one small all-reduce and one host sync. Nothing else here waits for the device.
        """
        net = self._close(name)
        net.scaler.unscale_(net.optimizer)
        params = [p for p in net.module.parameters() if p.grad is not None]
        norm = (
            torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros((), device=self.device)
        )
        out = {"grad_norm": norm}
        if guard:
            out["nonfinite"] = self._nonfinite(net, ~torch.isfinite(norm))
        net.losses.clear()
        if guard and out["nonfinite"].item() > 0:
            if net.scaler.is_enabled():  # let the scaler see the overflow and lower its scale
                net.scaler.step(net.optimizer)
                net.scaler.update()
            net.optimizer.zero_grad(set_to_none=True)
            return out
        if self.grad_clip > 0 and params:
            torch.nn.utils.clip_grads_with_norm_(params, self.grad_clip, norm)
        scale_before = net.scaler._scale.clone() if net.scaler.is_enabled() else None
        net.scaler.step(net.optimizer)
        net.scaler.update()
        if scale_before is not None:  # the scaler lowers its scale exactly when it skipped the step
            out["skipped"] = (net.scaler._scale < scale_before).float()
        net.optimizer.zero_grad(set_to_none=True)
        return out

    @contextlib.contextmanager
    def gathered(self, name: str) -> Iterator[nn.Module]:
        """Yield the plain module holding its full parameters (read-only use: G_ema, sampling, digests).

        A collective under ZeRO-3 (every rank must enter); here the parameters are always whole.
        """
        yield self.nets[name].module

    def checkpoint_state(self) -> dict:
        """What `state.pt` holds for the nets: full state dicts 'G', 'D' and the optimizer/scaler states.

        A collective under ZeRO-3 (every rank must call it); the values matter on rank 0 only.
        """
        self._sync_all_buffers()
        state: dict = {name: net.module.state_dict() for name, net in self.nets.items()}
        state.update({name: ema.module.state_dict() for name, ema in self.emas.items()})
        for name, net in self.nets.items():
            state[f"opt_{name}"] = net.optimizer.state_dict()
            state[f"scaler_{name}"] = net.scaler.state_dict()
        return state

    def _sync_all_buffers(self) -> None:
        """Rank 0's buffers on every rank, for every net and EMA: a checkpoint holds one set (a collective)."""
        for net in self.nets.values():
            self.sync_buffers(net.module)
        for name in self.emas:
            with self.ema(name) as module:
                self.sync_buffers(module)

    def save_engine_states(self, folder: Path) -> None:
        """Write sharded per-rank states into the checkpoint folder (every rank calls it); none here."""

    def load_state(self, folder: Path, shared: dict) -> None:
        """Restore the nets, optimizers and scalers from a checkpoint (its folder and its `state.pt` dict)."""
        missing = [k for n in self.nets for k in (n, f"opt_{n}", f"scaler_{n}") if k not in shared]
        if missing:
            written_by = shared.get("strategy", {}).get("name", "another strategy")
            raise ConfigError(
                f"checkpoint {folder} has no {missing} in state.pt (written by {written_by}, which keeps optimizer "
                f"states in its own sub-folders): resume it with the strategy that wrote it (strategy.name)"
            )
        for name, net in self.nets.items():
            net.module.load_state_dict(shared[name])
            net.optimizer.load_state_dict(shared[f"opt_{name}"])
            net.scaler.load_state_dict(shared[f"scaler_{name}"])
        for name, ema in self.emas.items():
            ema.module.load_state_dict(shared[name])

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over all ranks (a collective: every rank must call it)."""
        if self.world_size == 1:
            return tensor
        return self.accelerator.reduce(tensor.clone(), reduction="mean")

    def reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise max over all ranks (a collective: every rank must call it)."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s (picklable) object on every rank (a collective)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list:
        """Every rank's (picklable) object, in rank order, on every rank (a collective)."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's N_r x D tensor concatenated in rank order, on every rank; N_r may differ (a collective)."""
        if self.world_size == 1:
            return local
        count = torch.tensor([local.shape[0]], device=local.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        torch.distributed.all_gather(counts, count)
        counts = [int(c) for c in counts]
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in counts]
        torch.distributed.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, counts)])

    def any_rank(self, flag: bool) -> bool:
        """True on every rank iff `flag` is True on any rank: a collective on the host (no device sync)."""
        if self.world_size == 1:
            return bool(flag)
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, group=self._cpu_group)
        return bool(value.item())

    def all_ok(self, ok: bool) -> bool:
        """True on every rank iff `ok` is True on every rank (a collective on the host)."""
        return not self.any_rank(not ok)

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

        Forward passes outside DDP's own buffer broadcast (the frozen D in the G phase, the last
        step's G) leave each rank with running statistics of its own batch.
        """
        if self.world_size > 1:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Tear down the process group: a clean exit avoids gloo's abort at interpreter shutdown."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # On a clean exit all ranks tear down together: a rank that left while rank 0 still wrote its
            # summary closed gloo connections under it (an abort at exit, seen in two-node DeepSpeed runs).
            # Not while an exception propagates (close() runs in a finally): the other ranks may never come.
            if sys.exc_info()[0] is None:
                torch.distributed.barrier()
            self._release_wrappers()
            torch.distributed.destroy_process_group()

    def _release_wrappers(self) -> None:
        """Drop the DDP wrappers / DeepSpeed engines (they hold the process group) while it is still alive.

        Left to interpreter shutdown, a wrapper freed after the group was destroyed aborted the process
        now and then ("terminate called without an active exception", exit -6) once training had
        finished.
        """
        for net in self.nets.values():
            net.wrapped = net.module
        self.accelerator.free_memory()
        gc.collect()


def param_digest(module: nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (order and bytes): equal iff bit-identical."""
    h = hashlib.sha256()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        digest_update(h, name, t)
    return h.hexdigest()[:16]


def digest_update(h: Any, name: str, t: torch.Tensor) -> None:
    """Add one named tensor to a running digest."""
    h.update(name.encode())
    h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
