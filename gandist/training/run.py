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
from gandist.data.specs import DataError, check_dataset, expand_shards
from gandist.data.stream import ShardLoader, StreamSpec, make_loader
from gandist.files import atomic_write_text
from gandist.metrics import Evaluator
from gandist.metrics.reference import ReferenceSpec
from gandist.models import build_nets
from gandist.objectives.augment import AugmentPipe
from gandist.objectives.losses import PAIRED, get_losses
from gandist.objectives.regularizers import LeCam
from gandist.reporting.progress import Reporter
from gandist.reporting.stats import TickStats
from gandist.reporting.trackers import Trackers, environment_summary
from gandist.strategy import Strategy
from gandist.training import checkpoint
from gandist.training.debug import DebugFaults
from gandist.training.device import set_up_device
from gandist.training.lock import RunLock, process_started
from gandist.training.optim import lazy_regularization_opt, make_optimizer
from gandist.training.phases import Phases
from gandist.training.state import Progress, TrainState, data_key
from gandist.training.stopping import StopRequested, StopWhileWaiting, clear_requeue_marker, clear_stale_stop_file


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
    lock: RunLock
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
    debug: DebugFaults | None = None
    resumed_from: Path | None = None
    grid_c: torch.Tensor | None = field(init=False)
    ticks: Cadence = field(init=False)
    snapshots: Cadence = field(init=False)
    checkpoints: Cadence = field(init=False)
    metrics: Cadence = field(init=False)
    steps_this_job: int = 0
    skipped_this_job: int = 0
    bad_in_a_row: int = 0
    stopped_early: bool = False
    ada_nimg: int = 0
    tick_start_nimg: int = 0
    tick_start_time: float = 0.0
    wait_time: float = 0.0

    def __post_init__(self) -> None:
        t, nimg, classes = self.cfg.train, self.progress.nimg, self.cfg.model.num_classes
        self.grid_z = self.grid_z.to(self.device)
        self.grid_c = torch.arange(t.grid_size, device=self.device) % classes if classes else None
        self.ticks = Cadence(t.tick_kimg * 1000, nimg)
        # grids, checkpoints and metrics at multiples of their intervals, so a resumed job keeps the marks
        # an uninterrupted run has (checkpoints at 20, 40, 60 kimg after a requeue at 27)
        self.snapshots = Cadence(t.snapshot_kimg * 1000, nimg, aligned=True)
        self.checkpoints = Cadence(t.checkpoint_kimg * 1000, nimg, aligned=True)
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

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This rank's next (uint8 images, labels) on the host, or None if a stop request came while it waited.

        The wait counts towards data_wait_frac.
        """
        start = time.perf_counter()
        try:
            with self.stopper.waiting():
                batch = next(self.batches)
        except StopWhileWaiting:
            batch = None
        except StopIteration:  # a worker's stream ended: it was stopped together with this process
            if not self.stopper.signal_name:
                raise DataError(f"data.shards={self.cfg.data.shards!r}: the data stream ended unexpectedly") from None
            batch = None
        self.wait_time += time.perf_counter() - start
        return batch

    def stop_agreed(self) -> bool:
        """Whether the ranks agree to stop before the next step (a collective: every rank, every step)."""
        if self.stopper.vote(self.progress.step, self.strategy.any_rank):
            self.stopped_early = True
        return self.stopped_early

    def start_tick(self) -> None:
        """Start timing a tick (images/s, data wait) from here."""
        self.tick_start_nimg, self.tick_start_time, self.wait_time = self.progress.nimg, time.perf_counter(), 0.0


def set_up(cfg: Config, strategy: Strategy, stopper: StopRequested) -> Run:
    """Build everything this rank needs to train, resuming from a checkpoint where there is one.

    `stopper` is already trapping the stop signals; the run folder's lock is released if set-up fails.
    """
    t, device = cfg.train, strategy.device
    channels_last = set_up_device(t, device.type, strategy.name)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if strategy.is_main else (lambda text: None)
    run_dir, lock = make_run_dir(cfg, strategy, say)
    try:
        stopper.stop_file = Path(cfg.faults.stop_file) if cfg.faults.stop_file else run_dir / "STOP"
        state, base_lr = _build_state(cfg, strategy, memory_format)
        resumed_from = _resume(cfg, state, run_dir)
        loader = _make_loader(cfg, strategy, state.progress)
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed: keep the run's random stream
            batches = iter(loader)
        reporter = Reporter(run_dir, t.kimg, state.progress.nimg / 1000, enabled=strategy.is_main)
        trackers = Trackers(
            strategy.accelerator,
            cfg.tracking,
            run_dir,
            {**to_dict(cfg), "env": environment_summary(strategy.world_size, str(device))},
            run_id=state.progress.tracker_run_id,
            say=reporter.message,
            restart=cfg.resume in ("never", "restart"),
        )
        state.progress.tracker_run_id = trackers.run_id
        run = Run(
            cfg=cfg,
            strategy=strategy,
            run_dir=run_dir,
            lock=lock,
            state=state,
            phases=_make_phases(cfg, strategy, state),
            loader=loader,
            batches=batches,
            reporter=reporter,
            trackers=trackers,
            evaluator=_make_evaluator(cfg, strategy, reporter),  # now: a missing feature net fails before training
            stopper=stopper,
            memory_format=memory_format,
            base_lr=base_lr,
            grid_z=torch.randn(t.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 2)),
            debug=DebugFaults(cfg.debug, strategy.rank) if DebugFaults.wanted(cfg.debug) else None,
            resumed_from=resumed_from,
        )
    except BaseException:
        lock.release()
        raise
    if strategy.is_main:
        clear_requeue_marker(run_dir)
    _announce(run, channels_last)
    return run


def _make_phases(cfg: Config, strategy: Strategy, state: TrainState) -> Phases:
    t = cfg.train
    losses = get_losses(t.loss)
    return Phases(
        strategy, *losses, TickStats(strategy.device), state.augment, state.lecam, t.lecam_weight, t.gp_weight,
        t.class_weight_d, t.class_weight_g, t.mode_seeking_weight, t.mode_seeking, t.consistency_weight,
        guard=cfg.faults.nan_guard, paired=t.loss in PAIRED,
    )  # fmt: skip


def make_run_dir(cfg: Config, strategy: Strategy, say) -> tuple[Path, RunLock]:
    """The run folder, named on rank 0 and shared with all ranks, locked for this job; rank 0 prepares it
    (earlier runs moved aside for resume=restart, a stale stop file removed) and writes the resolved config."""
    name = strategy.broadcast_object(cfg.run_name or time.strftime("%Y%m%d-%H%M%S"))
    run_dir = Path(cfg.output_dir) / name
    lock = RunLock(run_dir)
    error = None
    if strategy.is_main:
        try:
            _prepare_run_dir(cfg, run_dir, lock, say)
        except (ConfigError, OSError) as e:
            lock.release()
            error = e if isinstance(e, ConfigError) else ConfigError(f"cannot prepare the run folder {run_dir}: {e}")
    message = strategy.broadcast_object(str(error) if error else None)
    if message is not None:
        raise error or ConfigError(message)
    return run_dir, lock


def _prepare_run_dir(cfg: Config, run_dir: Path, lock: RunLock, say) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    note = lock.acquire()
    if note:
        say(f"gandist: {note}")
    existing = checkpoint.complete_checkpoints(run_dir)
    if cfg.resume == "never" and existing:
        raise ConfigError(
            f"key 'resume' = 'never' but {run_dir} holds checkpoints ({existing[-1].name}): use another run_name, "
            "resume=auto to continue that run, or resume=restart to move its checkpoints aside and start afresh"
        )
    if cfg.resume == "restart":
        aside = move_run_aside(run_dir)
        if aside is not None:
            say(f"gandist: resume=restart: the earlier run's checkpoints and stats are in {aside}")
    stop_file = Path(cfg.faults.stop_file) if cfg.faults.stop_file else run_dir / "STOP"
    if clear_stale_stop_file(stop_file, process_started()):
        say(f"gandist: removed {stop_file} left by an earlier stop (older than this job)")
    (run_dir / "samples").mkdir(exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    checkpoint.clean_partial(run_dir)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))


def move_run_aside(run_dir: Path) -> Path | None:
    """Move what an earlier run left in the folder (checkpoints, stats, samples, trackers) into previous-<time>/."""
    names = ("checkpoints", "samples", "stats.jsonl", "metrics.jsonl", "summary.json", "tracking.json", "REQUEUE")
    present = [run_dir / n for n in (*names, "wandb", "tensorboard") if (run_dir / n).exists()]
    if not present:
        return None
    aside = run_dir / time.strftime("previous-%Y%m%d-%H%M%S")
    aside.mkdir()
    for path in present:
        path.rename(aside / path.name)
    return aside


def _build_state(cfg: Config, strategy: Strategy, memory_format: torch.memory_format) -> tuple[TrainState, dict]:
    """G, D (identical on every rank), G_ema, their optimizers registered with the strategy, and the other state."""
    t, device = cfg.train, strategy.device
    G, D = build_nets(cfg.model, t.seed)
    torch.manual_seed(t.seed + 7919 * (strategy.rank + 1))  # per-rank augmentations and noise inputs
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    d_opt = lazy_regularization_opt(cfg.D_opt, t.r1_interval) if t.lazy_regularized else cfg.D_opt
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
        optimizers={"G": cfg.G_opt, "D": d_opt},
    )
    return state, {"G": cfg.G_opt.lr, "D": d_opt.lr}


def resume_path(cfg: Config, run_dir: Path, strategy: Strategy) -> Path | None:
    """The checkpoint this job continues from (key `resume`), or None for a fresh start; rank 0 finds and verifies
    it (resume=auto passes over damaged checkpoints, naming them), every rank gets its answer."""
    if cfg.resume in ("never", "restart"):
        return None
    found: Path | str | None = None
    if strategy.is_main:
        if cfg.resume == "auto":
            say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
            found = checkpoint.latest_intact(run_dir, say)
        else:
            try:
                found = checkpoint.find_checkpoint(cfg.resume)
                checkpoint.verify(found)
            except checkpoint.CheckpointError as e:
                found = f"key 'resume' = {cfg.resume!r}: {e}"
    found = strategy.broadcast_object(found)
    if isinstance(found, str):
        raise ConfigError(found)
    return found


def _resume(cfg: Config, state: TrainState, run_dir: Path) -> Path | None:
    """Load the checkpoint to continue from, if any; give the data stream a fresh start if its settings changed."""
    world = state.strategy.world_size
    resumed_from = resume_path(cfg, run_dir, state.strategy)
    if resumed_from is not None:
        state.load(resumed_from)
        state.progress.restart += 1
    progress = state.progress
    if progress.nimg > int(cfg.train.kimg * 1000):
        raise ConfigError(
            f"key 'train.kimg' = {cfg.train.kimg:g} is below the progress of checkpoint {resumed_from} "
            f"({progress.nimg / 1000:g} kimg): raise train.kimg to train on, or use another run_name"
        )
    if progress.data_key != data_key(cfg, world):  # new run, or other data settings: a stream of its own
        if resumed_from is not None and state.strategy.is_main:
            print(f"gandist: data settings changed since {resumed_from}: a fresh data stream", file=sys.stderr)
        progress.data_key, progress.data_stream, progress.data_batches = data_key(cfg, world), progress.restart, 0
    return resumed_from


def _make_loader(cfg: Config, strategy: Strategy, progress: Progress) -> ShardLoader:
    """This rank's endless stream of training batches; fails fast on a dataset that cannot fit."""
    urls, source = expand_shards(cfg.data.shards), cfg.data.shards or "<embedded>"
    check_dataset(urls, cfg.model.resolution, source, cfg.data.timeout_s)
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
            timeout_s=cfg.data.timeout_s,
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
