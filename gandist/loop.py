"""The training loop: alternating D and G phases, counted in images shown to D (kimg).

    set up: process group, run folder, G, D, G_ema, Adam per net, strategy, per-rank shard stream;
            resume from the newest complete checkpoint (state.py) if there is one;
            on CUDA the fast path (fastpath.py): channels_last, fused Adam, TF32, cudnn.benchmark [, torch.compile]
            on the CPU: glibc's malloc keeps freed memory for the next step (fastpath.tune_malloc)
    while nimg < train.kimg * 1000:
        real, c <- next batch of this rank (uint8 on the host) -> device, [-1, 1]; c: class labels or None
        lr     <- schedule(kimg) (schedule.py)
        D phase: fake = G(z, c').detach();  L_D = d_loss(D(aug(real), c), D(aug(fake), c'))
                 [+ lecam_weight * LeCam] [+ gp_weight * gradient penalty];  step D
        G phase: D frozen (raw module);  L_G = g_loss(D(aug(G(z'', c'')), c''));  step G
                 (train.compile: the first step compiles; if that fails, one warning and the step again eager)
                 (each phase in micro-batches under gradient accumulation: backward each, step at the last)
        R1 phase, every r1_interval steps: r1_gamma/2 * r1_interval * |grad D(aug(real))|^2;  step D
        ADA, every augment.interval steps: p += sign(E[sign D(aug(real))] - target) * images / speed
                 (a NaN/Inf loss or gradient on any rank: every rank skips that step;
                  faults.max_bad_steps in a row: roll back to the last checkpoint)
        G_ema  <- lerp towards G (gathered under ZeRO-3) with a half-life of train.ema_kimg
        nimg += global batch
        every metrics interval: all ranks generate and embed a share; rank 0 computes FID/KID/PR
        once per tick:     reduce stats across ranks; rank 0 writes stats.jsonl, W&B, the bar
        before G_ema is used (grid, metrics, checkpoint): re-estimate its BatchNorm statistics
        every snapshot:    rank 0 writes a G_ema grid of the fixed noise to samples/
        every checkpoint:  all ranks save (state.py, checkpoint.py; DeepSpeed engines into ds_G/, ds_D/)
        every few steps:   all ranks agree whether to stop early (signal, stop file, time budget)
    at the end: grid, metrics, checkpoint, parameter checksums of every rank in summary.json;
    stopped early: also a REQUEUE marker, and the process exits with REQUEUE_EXIT_CODE

z (and c' for conditional fakes) is drawn for the global batch from one generator shared by all
ranks and each rank takes its slice, so a run's noise does not depend on the number of ranks.
Augmentation and StyleGAN2's noise inputs use the global generator, seeded per rank.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from gandist import checkpoint
from gandist.augment import AugmentPipe
from gandist.config import Config, ConfigError, to_dict, to_yaml, validate
from gandist.data import DataError, ShardLoader, StreamSpec, check_dataset, expand_shards, make_loader, to_device_float
from gandist.ema import ema_beta, make_ema, refresh_batchnorm_stats, update_ema
from gandist.fastpath import first_step_or_eager, resolve_fused, set_up_device
from gandist.images import make_grid, save_grid
from gandist.losses import get_losses
from gandist.metrics import Evaluator
from gandist.models import build_models
from gandist.preemption import StopRequested, clear_requeue_marker, write_requeue_marker
from gandist.regularizers import LeCam, gradient_penalty, r1_penalty
from gandist.schedule import lr_multiplier
from gandist.state import Progress, TrainState, data_key
from gandist.strategy import Strategy, make_strategy
from gandist.trackers import Trackers, environment_summary
from gandist.tracking import Reporter, TickStats


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
    guard: bool = False
    poison: bool = False  # debug.nan_at_steps: make this step's D loss NaN

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
        s = self.strategy
        G, D = s.train_forward("G"), s.train_forward("D")
        with s.autocast():
            with torch.no_grad():
                fake = G(z, c_fake)
            real_logits = D(self.augment(real), c_real)
            fake_logits = D(self.augment(fake), c_fake)
            loss = self.d_loss(real_logits.float(), fake_logits.float())
            if self.poison:
                loss = loss * float("nan")
        regularized = loss
        if self.lecam is not None:
            lecam = self.lecam.penalty(real_logits.float(), fake_logits.float())
            regularized = regularized + self.lecam_weight * lecam
            self.stats.add("loss/lecam", lecam)
        if self.gp_weight > 0:  # in fp32: a gradient of a gradient
            gp = gradient_penalty(s.train_forward("D", eager=True), real, fake, c_real)[0].mean()
            regularized = regularized + self.gp_weight * gp
            self.stats.add("loss/gp", gp)
        ok = self._record("D", s.backward_and_step("D", regularized, guard=self.guard))
        self.augment.observe(real_logits)
        if ok:
            self.stats.add("loss/D", loss)
            self.stats.add("score/real", real_logits.detach().float().mean())
            self.stats.add("score/fake", fake_logits.detach().float().mean())
        return ok

    def g_phase(self, z: torch.Tensor, c: torch.Tensor | None = None) -> bool:
        """One G step through a frozen D; False if skipped."""
        s = self.strategy
        G = s.train_forward("G")
        with s.frozen("D") as D, s.autocast():
            loss = self.g_loss(D(self.augment(G(z, c)), c).float())
        ok = self._record("G", s.backward_and_step("G", loss, guard=self.guard))
        if ok:
            self.stats.add("loss/G", loss)
        return ok

    def r1_phase(self, real: torch.Tensor, c: torch.Tensor | None, gamma: float, interval: int) -> bool:
        """Lazy R1 as its own D step: gamma/2 * E|grad D(aug(real))|^2, scaled by the steps it stands for."""
        s = self.strategy
        with torch.no_grad():
            images = self.augment(real)
        penalty, logits = r1_penalty(s.train_forward("D", eager=True), images, c)  # compiled: no double backward
        # logits * 0: every D parameter takes part in this backward, as DDP's reducer expects
        loss = penalty.mean() * (gamma / 2 * interval) + logits.float().sum() * 0
        ok = self._record("D_r1", s.backward_and_step("D", loss, guard=self.guard))
        if ok:
            self.stats.add("loss/r1", penalty.mean())
        return ok

    def _record(self, name: str, step_stats: dict[str, torch.Tensor]) -> bool:
        """Add a phase's step statistics (device tensors: no host sync); True unless the non-finite guard skipped
        the step."""
        if not step_stats:  # a micro-batch that did not step (gradient accumulation)
            return True
        if "nonfinite" in step_stats and step_stats["nonfinite"].item() > 0:  # a host tensor: no sync
            return False
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
    ) -> bool:
        """One D step then one G step on this rank's batch, each in strategy.accumulation micro-batches.

        False if the non-finite guard skipped either step.
        """
        n = self.strategy.accumulation
        split = lambda x: x.chunk(n) if x is not None else [None] * n  # noqa: E731
        ok = True
        for real_i, z_i, cr_i, cd_i in zip(real.chunk(n), z_d.chunk(n), split(c_real), split(c_d)):
            ok = self.d_phase(real_i, z_i, cr_i, cd_i) and ok
        for z_i, c_i in zip(z_g.chunk(n), split(c_g)):
            ok = self.g_phase(z_i, c_i) and ok
        return ok


def build_nets(cfg: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model config, with identical initial weights on every rank (seeded)."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    return build_models(
        m.arch, m.resolution, m.channels, m.z_dim, m.g_width, m.d_width, num_classes=m.num_classes, d_mbstd=m.d_mbstd
    )


def class_labels(labels: torch.Tensor, num_classes: int, shards: str) -> torch.Tensor:
    """Check a host batch of labels for a conditional model (-1 means the sample had no cls)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"model.num_classes={num_classes} but data.shards={shards or '<embedded sample>'!r} has "
            f"{'samples without a cls label' if low < 0 else f'label {high}'}: write labels 0..{num_classes - 1} "
            "into the shards or set model.num_classes=0 (unconditional)"
        )
    return labels


def lazy_regularization_opt(opt_cfg, interval: int):
    """Adam settings of a net regularised every `interval` steps (StyleGAN2): lr and betas scaled by k/(k+1)."""
    ratio = interval / (interval + 1)
    return replace(opt_cfg, lr=opt_cfg.lr * ratio, betas=tuple(b**ratio for b in opt_cfg.betas))


def make_optimizer(params, opt_cfg, device_type: str = "cpu") -> torch.optim.Adam:
    """Adam for one net whose parameters live on `device_type`: fused on CUDA (opt_cfg.fused=auto), else torch's
    default (foreach), exactly as before the fast path."""
    fused = True if resolve_fused(opt_cfg.fused, device_type) else None
    return torch.optim.Adam(
        params,
        lr=opt_cfg.lr,
        betas=tuple(opt_cfg.betas),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        fused=fused,
    )


def param_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (order and bytes): equal iff bit-identical."""
    h = hashlib.sha256()
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _run_dir(cfg: Config, strategy: Strategy) -> Path:
    """The run folder, named on rank 0 and shared with all ranks."""
    name = [cfg.run_name or time.strftime("%Y%m%d-%H%M%S")]
    if strategy.world_size > 1:
        broadcast_object_list(name, from_process=0)
    run_dir = Path(cfg.output_dir) / name[0]
    if strategy.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        checkpoint.clean_partial(run_dir)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    strategy.barrier()
    return run_dir


def _resume_path(cfg: Config, run_dir: Path) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return checkpoint.latest_checkpoint(run_dir)
    path = Path(cfg.resume)
    if not (path / checkpoint.MARKER).is_file():
        found = checkpoint.latest_checkpoint(path) if path.is_dir() else None
        if found is None:
            raise ConfigError(f"key 'resume' = {cfg.resume!r}: no complete checkpoint there")
        return found
    return path


@dataclass
class TrainResult:
    """How a training job ended."""

    run_dir: Path
    stopped_early: bool = False
    """True when a signal, the stop file or the time budget ended the job before its kimg budget."""
    reason: str = ""


def train(cfg: Config) -> TrainResult:
    """Run a whole training job in this process (one rank of a launch)."""
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
    try:
        return _train(cfg, strategy)
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            # name the rank: the launcher shows every rank's output interleaved
            print(f"gandist: rank {strategy.rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        strategy.close()


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


def _train(cfg: Config, strategy: Strategy) -> TrainResult:
    t, world, rank, device = cfg.train, strategy.world_size, strategy.rank, strategy.device
    validate(cfg, world_size=world)
    batch_per_gpu = t.batch // world
    channels_last = set_up_device(t, device.type, strategy.name)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    run_dir = _run_dir(cfg, strategy)

    G, D = build_nets(cfg)
    torch.manual_seed(t.seed + 7919 * (rank + 1))  # per-rank augmentations and noise inputs; weights stay equal
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    G_ema = make_ema(G)
    d_opt = lazy_regularization_opt(cfg.D_opt, t.r1_interval) if t.r1_gamma > 0 else cfg.D_opt
    # the parameters are on the device now (strategy.add wraps them in place): fused Adam is chosen for it
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt, device.type))
    strategy.add("D", D, make_optimizer(D.parameters(), d_opt, device.type))
    if t.compile:
        strategy.compile(t.compile_backend)
    base_lr = {"G": cfg.G_opt.lr, "D": d_opt.lr}
    a = cfg.augment
    augment = AugmentPipe(a.diffaugment, a.ada, a.p, a.target, a.speed_kimg, device)
    lecam = LeCam(t.lecam_decay, device) if t.lecam_weight > 0 else None
    state = TrainState(
        cfg,
        strategy,
        G,
        D,
        G_ema,
        noise=torch.Generator(device=device).manual_seed(t.seed + 1),
        augment=augment,
        lecam=lecam,
    )
    stats = TickStats(device)
    phases = Phases(
        strategy, *get_losses(t.loss), stats, augment, lecam, t.lecam_weight, t.gp_weight, guard=cfg.faults.nan_guard
    )
    num_classes = cfg.model.num_classes
    grid_z = torch.randn(t.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 2)).to(device)
    grid_c = torch.arange(t.grid_size, device=device) % num_classes if num_classes else None

    resume_from = _resume_path(cfg, run_dir)
    if resume_from is not None:
        state.load(resume_from)
        state.progress.restart += 1
    progress = state.progress
    if progress.data_key != data_key(cfg, world):  # new run, or other data settings: a stream of its own
        if resume_from is not None and strategy.is_main:
            print(f"gandist: data settings changed since {resume_from}: a fresh data stream", file=sys.stderr)
        progress.data_key, progress.data_stream, progress.data_batches = data_key(cfg, world), progress.restart, 0
    loader = _make_loader(cfg, strategy, progress)
    with torch.random.fork_rng(devices=[]):  # the DataLoader draws a seed: keep the run's random stream untouched
        batches = iter(loader)

    reporter = Reporter(run_dir, t.kimg, progress.nimg / 1000, enabled=strategy.is_main)
    trackers = Trackers(
        cfg.tracking,
        run_dir,
        {**to_dict(cfg), "env": environment_summary(world, str(device))},
        enabled=strategy.is_main,
        run_id=progress.tracker_run_id,
        say=reporter.message,
    )
    progress.tracker_run_id = trackers.run_id
    evaluator = None
    if cfg.metrics.interval_kimg > 0:  # built now: a missing feature network fails before training, not after
        reference = cfg.metrics.reference or cfg.data.shards
        m = cfg.model
        evaluator = Evaluator(cfg.metrics, reference, m.resolution, m.channels, device, rank, world, reporter.message)
    reporter.message(
        f"gandist: run {run_dir} | {world} process(es) on {device.type} | batch {t.batch} ({batch_per_gpu}/rank) | "
        f"precision {strategy.precision} | {strategy.describe()} | {t.kimg} kimg"
        + (" | channels_last" if channels_last else "")
        + (f" | compiled ({t.compile_backend})" if strategy.compiled else "")
        + (f" | resumed from {resume_from}" if resume_from else "")
    )
    stop_file = Path(cfg.faults.stop_file) if cfg.faults.stop_file else run_dir / "STOP"
    stopper = StopRequested(stop_file, cfg.faults.stop_after_minutes, cfg.faults.check_every)
    stopper.install()
    if strategy.is_main:
        clear_requeue_marker(run_dir)

    def settle_G_ema() -> None:
        refresh_batchnorm_stats(G_ema, cfg.model.z_dim, num_classes, device, seed=t.seed)

    def write_grid() -> None:
        settle_G_ema()
        if strategy.is_main:
            with torch.no_grad(), strategy.autocast():
                images = G_ema(grid_z, grid_c)
            kimg = progress.nimg / 1000
            save_grid(images, run_dir / "samples" / f"fakes-{kimg:010.3f}kimg.png")
            if cfg.tracking.log_images:
                trackers.log_image("samples/fakes", make_grid(images), f"G_ema at {kimg:.3f} kimg", progress.step)

    def save() -> Path:
        settle_G_ema()
        return state.save(run_dir, delay_s=cfg.debug.checkpoint_delay_s)

    if progress.nimg == 0:
        write_grid()
    total_nimg = int(t.kimg * 1000)
    tick_start_nimg, tick_start_time, wait_time = progress.nimg, time.perf_counter(), 0.0
    next_tick = progress.nimg + t.tick_kimg * 1000
    next_snapshot = progress.nimg + t.snapshot_kimg * 1000
    next_checkpoint = progress.nimg + t.checkpoint_kimg * 1000 if t.checkpoint_kimg > 0 else float("inf")
    steps_this_job, bad_in_a_row, stopped_early = 0, 0, False
    metrics_every = cfg.metrics.interval_kimg * 1000
    next_metrics = (progress.nimg // metrics_every + 1) * metrics_every if evaluator is not None else float("inf")
    schedule = t.lr_warmup_kimg > 0 or t.lr_decay != "constant"
    ada_nimg = 0

    def run_metrics() -> None:
        nonlocal tick_start_time
        strategy.sync_buffers(G_ema)  # buffers copied from G differ per rank: measure rank 0's G_ema everywhere
        settle_G_ema()
        results = evaluator(G_ema, cfg.model.z_dim, num_classes, seed=t.seed)
        for key, value in results.items():
            stats.add(key, torch.tensor(value, device=device))
        if strategy.is_main:
            with (run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"kimg": round(progress.nimg / 1000, 3), "step": progress.step, **results}) + "\n")
            reporter.message(f"gandist: metrics at {progress.nimg / 1000:.3f} kimg: " + json.dumps(results))
        tick_start_time += results["metrics/seconds"]  # keep images_per_s about training

    while progress.nimg < total_nimg and not (t.max_steps and steps_this_job >= t.max_steps) and not stopped_early:
        t_wait = time.perf_counter()
        images, labels = next(batches)
        wait_time += time.perf_counter() - t_wait
        if progress.step == 0 and strategy.is_main:
            reals = images[: t.grid_size]
            save_grid(reals, run_dir / "samples" / "reals.png")
            if cfg.tracking.log_images:
                trackers.log_image("samples/reals", make_grid(reals), "real training images", 0)
        real = to_device_float(images, device, memory_format)
        c_real = None
        if num_classes:  # pinned host labels: an asynchronous copy, no wait for the device
            c_real = class_labels(labels, num_classes, cfg.data.shards).to(device, non_blocking=True)
        if schedule:
            factor = lr_multiplier(progress.nimg / 1000, t.kimg, t.lr_warmup_kimg, t.lr_decay, t.lr_final)
            for name in ("G", "D"):
                for group in strategy.optimizer(name).param_groups:
                    group["lr"] = base_lr[name] * factor
        if steps_this_job == cfg.debug.fail_at_step and rank == cfg.debug.fail_rank:
            raise RuntimeError(f"debug.fail_at_step={cfg.debug.fail_at_step}: injected failure on rank {rank}")
        phases.poison = steps_this_job in cfg.debug.nan_at_steps and cfg.debug.nan_rank in (-1, rank)

        z_d = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=state.noise)
        z_g = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=state.noise)
        mine = slice(rank * batch_per_gpu, (rank + 1) * batch_per_gpu)
        c_d = c_g = None
        if num_classes:
            c_d = torch.randint(num_classes, (t.batch,), device=device, generator=state.noise)[mine]
            c_g = torch.randint(num_classes, (t.batch,), device=device, generator=state.noise)[mine]
        step = partial(phases.step, real, z_d[mine], z_g[mine], c_real, c_d, c_g)
        ok = first_step_or_eager(strategy, step, reporter.message) if steps_this_job == 0 else step()
        if t.r1_gamma > 0 and progress.step % t.r1_interval == 0:
            ok = phases.r1_phase(real, c_real, t.r1_gamma, t.r1_interval) and ok
        ada_nimg += t.batch
        if augment.adaptive and (progress.step + 1) % cfg.augment.interval == 0:
            stats.add("augment/rt", augment.adjust(ada_nimg, strategy.reduce_mean))
            ada_nimg = 0
        if augment.ada_ops:
            stats.add("augment/p", augment.p)

        with strategy.gathered("G") as G_full:
            update_ema(G_ema, G_full, ema_beta(t.batch, progress.nimg, t.ema_kimg, t.ema_rampup))
        progress.nimg += t.batch
        progress.step += 1
        progress.data_batches += 1
        steps_this_job += 1
        reporter.advance(progress.nimg / 1000)
        if phases.guard:
            stats.add("faults/nonfinite_frac", torch.full((), 0.0 if ok else 1.0, device=device))  # a fill: no copy
            bad_in_a_row = 0 if ok else bad_in_a_row + 1
            progress.skipped_steps += 0 if ok else 1
            if bad_in_a_row >= cfg.faults.max_bad_steps:
                _roll_back(state, run_dir, reporter)
                bad_in_a_row = 0

        done = progress.nimg >= total_nimg or (t.max_steps and steps_this_job >= t.max_steps)
        if not done and stopper.should_stop(progress.step, strategy.reduce_max, device):
            done = stopped_early = True
        if evaluator is not None and (progress.nimg >= next_metrics or done):
            run_metrics()
            while next_metrics <= progress.nimg:
                next_metrics += metrics_every
        if progress.nimg >= next_tick or done:
            means = stats.means(strategy.reduce_mean)
            elapsed = time.perf_counter() - tick_start_time
            shown = progress.nimg - tick_start_nimg
            record = {
                "kimg": round(progress.nimg / 1000, 3),
                "step": progress.step,
                "images_per_s": round(shown / max(elapsed, 1e-9), 1),
                "sec_per_kimg": round(elapsed / max(shown / 1000, 1e-9), 3),
                "data_wait_frac": round(wait_time / max(elapsed, 1e-9), 4),
                **{k: round(v, 5) for k, v in means.items()},
                **loader.tick_stats(strategy.reduce_mean, world, device),
            }
            for name in ("G", "D"):
                record[f"lr/{name}"] = strategy.optimizer(name).param_groups[0]["lr"]
                if strategy.scaler(name).is_enabled():
                    record[f"loss_scale/{name}"] = strategy.scaler(name).get_scale()
            if phases.guard:
                record["faults/skipped_steps"] = progress.skipped_steps
                record["faults/rollbacks"] = progress.rollbacks
            if record["data/bad_samples"]:
                reporter.message(f"gandist: skipped {record['data/bad_samples']} bad sample(s) this tick")
            if device.type == "cuda":
                record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            reporter.tick(record)
            trackers.log(record, progress.step)
            tick_start_nimg, tick_start_time, wait_time = progress.nimg, time.perf_counter(), 0.0
            while next_tick <= progress.nimg:
                next_tick += t.tick_kimg * 1000
        if progress.nimg >= next_snapshot and not done:
            write_grid()
            while next_snapshot <= progress.nimg:
                next_snapshot += t.snapshot_kimg * 1000
        if progress.nimg >= next_checkpoint and not done:
            save()
            while next_checkpoint <= progress.nimg:
                next_checkpoint += t.checkpoint_kimg * 1000

    write_grid()
    existing = checkpoint.latest_checkpoint(run_dir)
    nothing_new = steps_this_job == 0 and existing is not None and existing.name == f"step-{progress.step:09d}"
    final = existing if nothing_new else save()  # never replace a complete checkpoint by the same step
    with strategy.gathered("G") as G_full, strategy.gathered("D") as D_full:
        mine = {"rank": rank, "G": param_digest(G_full), "D": param_digest(D_full), "G_ema": param_digest(G_ema)}
    digests = gather_object([mine])
    kimg = progress.nimg / 1000
    if strategy.is_main:
        in_sync = all(d[k] == digests[0][k] for d in digests for k in ("G", "D", "G_ema"))
        summary = {
            "kimg": round(kimg, 3),
            "step": progress.step,
            "world_size": world,
            "checkpoint": str(final),
            "stopped_early": stopped_early,
            "skipped_steps": progress.skipped_steps,
            "rollbacks": progress.rollbacks,
            "params_in_sync": in_sync,
            "rank_digests": digests,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if stopped_early:
            write_requeue_marker(run_dir, stopper.reason or "stop requested", kimg)
            reporter.message(f"gandist: stopped early ({stopper.reason}) at {kimg:.2f} kimg; checkpoint {final}")
        else:
            reporter.message(f"gandist: done at {kimg:.2f} kimg; samples in {run_dir / 'samples'}, checkpoint {final}")
        if not in_sync:
            reporter.message(f"gandist: WARNING ranks hold different parameters: {digests}")
    trackers.finish()
    reporter.close()
    # leave together: a launcher tears down the remaining ranks as soon as one has exited
    strategy.barrier()
    stopper.uninstall()
    return TrainResult(run_dir, stopped_early, stopper.reason or "")


def _roll_back(state: TrainState, run_dir: Path, reporter: Reporter) -> None:
    """Reload the newest complete checkpoint after persistent non-finite steps, or give up."""
    faults = state.cfg.faults
    last = checkpoint.latest_checkpoint(run_dir)
    progress = state.progress
    if last is None or progress.rollbacks >= faults.max_rollbacks:
        raise NonFiniteError(
            f"{faults.max_bad_steps} consecutive steps with NaN/Inf losses or gradients at step {progress.step}, "
            f"after {progress.rollbacks} rollback(s)"
            + ("" if last else " and no checkpoint to roll back to")
            + ": lower the learning rates, use fp32 (train.precision=fp32), or check the data"
        )
    kept = {
        k: getattr(progress, k) for k in ("skipped_steps", "tracker_run_id", "data_key", "data_stream", "data_batches")
    }
    rollbacks = progress.rollbacks + 1
    state.load(last)  # weights, optimizers and counters go back; the data stream goes on
    for key, value in kept.items():
        setattr(state.progress, key, value)
    state.progress.rollbacks = rollbacks
    reporter.message(f"gandist: {faults.max_bad_steps} non-finite steps in a row: rolled back to {last} (#{rollbacks})")


class NonFiniteError(RuntimeError):
    """Training kept producing NaN/Inf after the allowed rollbacks."""
