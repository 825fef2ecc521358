"""Set-up of a training job: everything one rank holds while it trains, built once into a `Run`.

set_up(cfg, strategy):  device settings -> run folder -> G, D, G_ema and their optimizers in the
                        strategy -> phases -> resume -> data stream -> reporting, trackers, metrics,
                        stop requests -> Run
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gandist.config import Config, ConfigError, to_dict, to_yaml
from gandist.data.specs import check_dataset, expand_shards
from gandist.data.stream import ShardLoader, StreamSpec, make_loader
from gandist.files import atomic_write_text
from gandist.metrics import Evaluator
from gandist.metrics.reference import ReferenceSpec
from gandist.models import build_nets
from gandist.objectives.augment import AugmentPipe
from gandist.objectives.losses import get_losses
from gandist.objectives.regularizers import LeCam
from gandist.reporting.progress import Reporter
from gandist.reporting.stats import TickStats
from gandist.reporting.trackers import Trackers, environment_summary
from gandist.strategy import Strategy
from gandist.training import checkpoint
from gandist.training.debug import DebugFaults
from gandist.training.device import set_up_device
from gandist.training.optim import lazy_regularization_opt, make_optimizer
from gandist.training.phases import Phases
from gandist.training.state import Progress, TrainState, data_key
from gandist.training.stopping import StopRequested, clear_requeue_marker


class Cadence:
    """Fires once whenever the image count reaches the next mark of an interval (ticks, grids, checkpoints).

    Marks lie `interval` images apart from where this job started, or at multiples of it (`aligned`);
    interval 0 never fires.
    """

    def __init__(self, interval: float, start: int, aligned: bool = False):
        if interval <= 0:
            self.next = float("inf")
        else:
            self.next = (start // interval + 1) * interval if aligned else start + interval
        self.interval = interval

    def due(self, nimg: int) -> bool:
        """True once for each time nimg passes a mark (several marks at once count as one)."""
        if nimg < self.next:
            return False
        while self.next <= nimg:
            self.next += self.interval
        return True


@dataclass
class Run:
    """One rank's training job: the config, the strategy, the state a checkpoint restores, and what reports."""

    cfg: Config
    strategy: Strategy
    run_dir: Path
    state: TrainState
    phases: Phases
    loader: ShardLoader
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    reporter: Reporter
    trackers: Trackers
    evaluator: Evaluator | None
    stopper: StopRequested
    memory_format: torch.memory_format
    base_lr: dict[str, float]
    grid_z: torch.Tensor
    grid_c: torch.Tensor | None
    debug: DebugFaults | None = None
    resumed_from: Path | None = None
    ticks: Cadence = field(init=False)
    snapshots: Cadence = field(init=False)
    checkpoints: Cadence = field(init=False)
    metrics: Cadence = field(init=False)
    steps_this_job: int = 0
    bad_in_a_row: int = 0
    stopped_early: bool = False
    ada_nimg: int = 0
    tick_start_nimg: int = 0
    tick_start_time: float = 0.0
    wait_time: float = 0.0

    def __post_init__(self) -> None:
        t, nimg = self.cfg.train, self.progress.nimg
        self.ticks = Cadence(t.tick_kimg * 1000, nimg)
        self.snapshots = Cadence(t.snapshot_kimg * 1000, nimg)
        self.checkpoints = Cadence(t.checkpoint_kimg * 1000, nimg)
        every = self.cfg.metrics.interval_kimg * 1000 if self.evaluator is not None else 0
        self.metrics = Cadence(every, nimg, aligned=True)
        self.start_tick()

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def device(self) -> torch.device:
        return self.strategy.device

    @property
    def budget_reached(self) -> bool:
        """train.kimg shown, or train.max_steps taken by this job."""
        max_steps = self.cfg.train.max_steps
        return self.progress.nimg >= int(self.cfg.train.kimg * 1000) or bool(
            max_steps and self.steps_this_job >= max_steps
        )

    @property
    def finished(self) -> bool:
        return self.budget_reached or self.stopped_early

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's next (uint8 images, labels) on the host; the wait counts towards data_wait_frac."""
        start = time.perf_counter()
        batch = next(self.batches)
        self.wait_time += time.perf_counter() - start
        return batch

    def start_tick(self) -> None:
        """Start timing a tick (images/s, data wait) from here."""
        self.tick_start_nimg, self.tick_start_time, self.wait_time = self.progress.nimg, time.perf_counter(), 0.0


def set_up(cfg: Config, strategy: Strategy) -> Run:
    """Build everything this rank needs to train, resuming from a checkpoint where there is one."""
    t, device = cfg.train, strategy.device
    channels_last = set_up_device(t, device.type, strategy.name)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    run_dir = make_run_dir(cfg, strategy)
    state, base_lr = _build_state(cfg, strategy, memory_format)
    phases = Phases(
        strategy,
        *get_losses(t.loss),
        TickStats(device),
        state.augment,
        state.lecam,
        t.lecam_weight,
        t.gp_weight,
        guard=cfg.faults.nan_guard,
    )
    resumed_from = _resume(cfg, state, run_dir)
    loader = _make_loader(cfg, strategy, state.progress)
    with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed: keep the run's random stream untouched
        batches = iter(loader)
    reporter = Reporter(run_dir, t.kimg, state.progress.nimg / 1000, enabled=strategy.is_main)
    trackers = Trackers(
        cfg.tracking,
        run_dir,
        {**to_dict(cfg), "env": environment_summary(strategy.world_size, str(device))},
        enabled=strategy.is_main,
        run_id=state.progress.tracker_run_id,
        say=reporter.message,
    )
    state.progress.tracker_run_id = trackers.run_id
    num_classes = cfg.model.num_classes
    run = Run(
        cfg=cfg,
        strategy=strategy,
        run_dir=run_dir,
        state=state,
        phases=phases,
        loader=loader,
        batches=batches,
        reporter=reporter,
        trackers=trackers,
        evaluator=_make_evaluator(cfg, strategy, reporter),  # now: a missing feature net fails before training
        stopper=_make_stopper(cfg, run_dir),
        memory_format=memory_format,
        base_lr=base_lr,
        grid_z=torch.randn(t.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 2)).to(
            device
        ),
        grid_c=torch.arange(t.grid_size, device=device) % num_classes if num_classes else None,
        debug=DebugFaults(cfg.debug, strategy.rank) if DebugFaults.wanted(cfg.debug) else None,
        resumed_from=resumed_from,
    )
    if strategy.is_main:
        clear_requeue_marker(run_dir)
    _announce(run, channels_last)
    return run


def make_run_dir(cfg: Config, strategy: Strategy) -> Path:
    """The run folder, named on rank 0 and shared with all ranks; rank 0 writes the resolved config there."""
    name = strategy.broadcast_object(cfg.run_name or time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(cfg.output_dir) / name
    if strategy.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(run_dir)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    strategy.barrier()
    return run_dir


def _build_state(cfg: Config, strategy: Strategy, memory_format: torch.memory_format) -> tuple[TrainState, dict]:
    """G, D (identical on every rank), G_ema, their optimizers registered with the strategy, and the other state."""
    t, device = cfg.train, strategy.device
    G, D = build_nets(cfg.model, t.seed)
    torch.manual_seed(t.seed + 7919 * (strategy.rank + 1))  # per-rank augmentations and noise inputs
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    d_opt = lazy_regularization_opt(cfg.D_opt, t.r1_interval) if t.r1_gamma > 0 else cfg.D_opt
    # the parameters are on the device now (strategy.add wraps them in place): fused Adam is chosen for it
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt, device.type))
    strategy.add("D", D, make_optimizer(D.parameters(), d_opt, device.type))
    strategy.add_ema("G_ema", "G")  # held as G is: a copy, or under ZeRO-3 this rank's partitions
    if t.compile:
        strategy.compile(t.compile_backend)
    a = cfg.augment
    state = TrainState(
        cfg,
        strategy,
        G,
        D,
        noise=torch.Generator(device=device).manual_seed(t.seed + 1),
        augment=AugmentPipe(a.diffaugment, a.ada, a.p, a.target, a.speed_kimg, device),
        lecam=LeCam(t.lecam_decay, device) if t.lecam_weight > 0 else None,
    )
    return state, {"G": cfg.G_opt.lr, "D": d_opt.lr}


def resume_path(cfg: Config, run_dir: Path) -> Path | None:
    """The checkpoint this job continues from (key `resume`), or None for a fresh start."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return checkpoint.latest_checkpoint(run_dir)
    try:
        return checkpoint.find_checkpoint(cfg.resume)
    except checkpoint.CheckpointError as e:
        raise ConfigError(f"key 'resume' = {cfg.resume!r}: {e}") from None


def _resume(cfg: Config, state: TrainState, run_dir: Path) -> Path | None:
    """Load the checkpoint to continue from, if any; give the data stream a fresh start if its settings changed."""
    world = state.strategy.world_size
    resumed_from = resume_path(cfg, run_dir)
    if resumed_from is not None:
        state.load(resumed_from)
        state.progress.restart += 1
    progress = state.progress
    if progress.data_key != data_key(cfg, world):  # new run, or other data settings: a stream of its own
        if resumed_from is not None and state.strategy.is_main:
            print(f"gandist: data settings changed since {resumed_from}: a fresh data stream", file=sys.stderr)
        progress.data_key, progress.data_stream, progress.data_batches = data_key(cfg, world), progress.restart, 0
    return resumed_from


def _make_loader(cfg: Config, strategy: Strategy, progress: Progress) -> ShardLoader:
    """This rank's endless stream of training batches; fails fast on a dataset that cannot fit."""
    urls, source = expand_shards(cfg.data.shards), cfg.data.shards or "<embedded>"
    check_dataset(urls, cfg.model.resolution, source)
    return make_loader(
        StreamSpec(
            urls=urls,
            batch_per_gpu=cfg.train.batch // strategy.world_size,
            resolution=cfg.model.resolution,
            channels=cfg.model.channels,
            seed=cfg.train.seed,
            rank=strategy.rank,
            restart=progress.data_stream,
            skip_batches=progress.data_batches,
            shuffle_buffer=cfg.data.shuffle_buffer,
            xflip=cfg.data.xflip,
            world_size=strategy.world_size,
            max_bad_frac=cfg.data.max_bad_frac,
            source=source,
        ),
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=strategy.device.type == "cuda",
    )


def _make_evaluator(cfg: Config, strategy: Strategy, reporter: Reporter) -> Evaluator | None:
    if cfg.metrics.interval_kimg <= 0:
        return None
    m = cfg.model
    reference = ReferenceSpec.of(cfg.metrics, cfg.metrics.reference or cfg.data.shards, m.resolution, m.channels)
    return Evaluator(cfg.metrics, reference, strategy, reporter.message)


def _make_stopper(cfg: Config, run_dir: Path) -> StopRequested:
    f = cfg.faults
    stopper = StopRequested(Path(f.stop_file) if f.stop_file else run_dir / "STOP", f.stop_after_minutes, f.check_every)
    stopper.install()
    return stopper


def _announce(run: Run, channels_last: bool) -> None:
    """The start-up line: where, how many processes, batch, precision, strategy, budget."""
    s, t = run.strategy, run.cfg.train
    run.reporter.message(
        f"gandist: run {run.run_dir} | {s.world_size} process(es) on {s.device.type} | batch {t.batch} "
        f"({t.batch // s.world_size}/rank) | precision {s.precision} | {s.describe()} | {t.kimg} kimg"
        + (" | channels_last" if channels_last else "")
        + (f" | compiled ({t.compile_backend})" if s.compiled else "")
        + (f" | resumed from {run.resumed_from}" if run.resumed_from else "")
    )
