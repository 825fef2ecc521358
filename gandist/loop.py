"""The training loop: alternating D and G phases, counted in images shown to D (kimg).

    set up: process group, run folder, G, D, G_ema, Adam per net, strategy, per-rank shard stream
    while nimg < train.kimg * 1000:
        real, c <- next batch of this rank (uint8 on the host) -> device, [-1, 1]; c: class labels or None
        lr     <- schedule(kimg) (schedule.py)
        D phase: fake = G(z, c').detach();  L_D = d_loss(D(aug(real), c), D(aug(fake), c'))
                 [+ lecam_weight * LeCam] [+ gp_weight * gradient penalty];  step D
        G phase: D frozen (raw module);  L_G = g_loss(D(aug(G(z'', c'')), c''));  step G
        R1 phase, every r1_interval steps: r1_gamma/2 * r1_interval * |grad D(aug(real))|^2;  step D
        ADA, every augment.interval steps: p += sign(E[sign D(aug(real))] - target) * images / speed
        G_ema  <- lerp towards G with a half-life of train.ema_kimg
        nimg += global batch
        every metrics interval: all ranks generate and embed a share; rank 0 computes FID/KID/PR
        once per tick:     reduce stats across ranks; rank 0 writes stats.jsonl, updates the bar
        every snapshot:    rank 0 writes a G_ema grid of the fixed noise to samples/
        every checkpoint:  all ranks save (checkpoint.py)
    at the end: grid, metrics, checkpoint, parameter checksums of every rank in summary.json

z (and c' for conditional fakes) is drawn for the global batch from one generator shared by all
ranks and each rank takes its slice, so a run's noise does not depend on the number of ranks.
Augmentation and StyleGAN2's noise inputs use the global generator, seeded per rank.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from gandist import checkpoint
from gandist.augment import AugmentPipe
from gandist.config import Config, ConfigError, to_dict, to_yaml, validate
from gandist.data import DataError, StreamSpec, expand_shards, make_loader, to_device_float
from gandist.ema import ema_beta, make_ema, update_ema
from gandist.images import make_grid, save_grid
from gandist.losses import get_losses
from gandist.metrics import Evaluator
from gandist.models import build_models
from gandist.regularizers import LeCam, gradient_penalty, r1_penalty
from gandist.schedule import lr_multiplier
from gandist.strategy import Strategy, make_accelerator
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

    def d_phase(
        self,
        real: torch.Tensor,
        z: torch.Tensor,
        c_real: torch.Tensor | None = None,
        c_fake: torch.Tensor | None = None,
    ) -> None:
        """One D step on this rank's real batch and fakes from z (G not trained); c: class labels or None."""
        s = self.strategy
        G, D = s.train_forward("G"), s.train_forward("D")
        with s.autocast():
            with torch.no_grad():
                fake = G(z, c_fake)
            real_logits = D(self.augment(real), c_real)
            fake_logits = D(self.augment(fake), c_fake)
            loss = self.d_loss(real_logits.float(), fake_logits.float())
        regularized = loss
        if self.lecam is not None:
            lecam = self.lecam.penalty(real_logits.float(), fake_logits.float())
            regularized = regularized + self.lecam_weight * lecam
            self.stats.add("loss/lecam", lecam)
        if self.gp_weight > 0:  # in fp32: a gradient of a gradient
            gp = gradient_penalty(D, real, fake, c_real)[0].mean()
            regularized = regularized + self.gp_weight * gp
            self.stats.add("loss/gp", gp)
        self._record("D", s.backward_and_step("D", regularized))
        self.augment.observe(real_logits)
        self.stats.add("loss/D", loss)
        self.stats.add("score/real", real_logits.detach().float().mean())
        self.stats.add("score/fake", fake_logits.detach().float().mean())

    def g_phase(self, z: torch.Tensor, c: torch.Tensor | None = None) -> None:
        """One G step through a frozen D."""
        s = self.strategy
        G = s.train_forward("G")
        with s.frozen("D") as D, s.autocast():
            loss = self.g_loss(D(self.augment(G(z, c)), c).float())
        self._record("G", s.backward_and_step("G", loss))
        self.stats.add("loss/G", loss)

    def r1_phase(self, real: torch.Tensor, c: torch.Tensor | None, gamma: float, interval: int) -> None:
        """Lazy R1 as its own D step: gamma/2 * E|grad D(aug(real))|^2, scaled by the steps it stands for."""
        s = self.strategy
        with torch.no_grad():
            images = self.augment(real)
        penalty, logits = r1_penalty(s.train_forward("D"), images, c)
        # logits * 0: every D parameter takes part in this backward, as DDP's reducer expects
        loss = penalty.mean() * (gamma / 2 * interval) + logits.float().sum() * 0
        self._record("D_r1", s.backward_and_step("D", loss))
        self.stats.add("loss/r1", penalty.mean())

    def _record(self, name: str, step_stats: dict[str, torch.Tensor]) -> None:
        self.stats.add(f"grad_norm/{name}", step_stats["grad_norm"])
        if "skipped" in step_stats:
            self.stats.add(f"skipped_frac/{name}", step_stats["skipped"])


def build_nets(cfg: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model config, with identical initial weights on every rank (seeded)."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    return build_models(m.arch, m.resolution, m.channels, m.z_dim, m.g_width, m.d_width, num_classes=m.num_classes)


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


def make_optimizer(params, opt_cfg) -> torch.optim.Adam:
    """Adam for one net."""
    return torch.optim.Adam(
        params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay
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


def train(cfg: Config) -> Path:
    """Run a whole training job in this process (one rank of a launch). Returns the run folder."""
    accelerator = make_accelerator(cfg.strategy)
    strategy = Strategy(accelerator, cfg.train.precision)
    try:
        return _train(cfg, strategy)
    finally:
        strategy.close()


def _train(cfg: Config, strategy: Strategy) -> Path:
    t, world, rank, device = cfg.train, strategy.world_size, strategy.rank, strategy.device
    validate(cfg, world_size=world)
    batch_per_gpu = t.batch // world
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    run_dir = _run_dir(cfg, strategy)

    G, D = build_nets(cfg)
    torch.manual_seed(t.seed + 7919 * (rank + 1))  # per-rank augmentations and noise inputs; weights stay equal
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    G_ema = make_ema(G)
    d_opt = lazy_regularization_opt(cfg.D_opt, t.r1_interval) if t.r1_gamma > 0 else cfg.D_opt
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
    strategy.add("D", D, make_optimizer(D.parameters(), d_opt))
    base_lr = {"G": cfg.G_opt.lr, "D": d_opt.lr}
    d_loss, g_loss = get_losses(t.loss)
    stats = TickStats(device)
    a = cfg.augment
    augment = AugmentPipe(a.diffaugment, a.ada, a.p, a.target, a.speed_kimg, device)
    lecam = LeCam(t.lecam_decay, device) if t.lecam_weight > 0 else None
    phases = Phases(strategy, d_loss, g_loss, stats, augment, lecam, t.lecam_weight, t.gp_weight)
    num_classes = cfg.model.num_classes
    evaluator = None
    if cfg.metrics.interval_kimg > 0:  # built now: a missing feature network fails before training, not after
        evaluator = Evaluator(
            cfg.metrics,
            cfg.metrics.reference or cfg.data.shards,
            cfg.model.resolution,
            cfg.model.channels,
            device,
            rank,
            world,
            say=lambda text: reporter.message(text),
        )

    noise = torch.Generator(device=device).manual_seed(t.seed + 1)
    grid_z = torch.randn(t.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 2)).to(device)
    grid_c = torch.arange(t.grid_size, device=device) % cfg.model.num_classes if cfg.model.num_classes else None
    nimg, step, restart, tracker_run_id = 0, 0, 0, None

    resume_from = _resume_path(cfg, run_dir)
    if resume_from is not None:
        shared, own = checkpoint.load_checkpoint(resume_from, rank)
        G.load_state_dict(shared["G"])
        D.load_state_dict(shared["D"])
        G_ema.load_state_dict(shared["G_ema"])
        for name in ("G", "D"):
            strategy.optimizer(name).load_state_dict(shared[f"opt_{name}"])
            strategy.scaler(name).load_state_dict(shared[f"scaler_{name}"])
        nimg, step, restart = shared["nimg"], shared["step"], shared["restart"] + 1
        if "augment" in shared:
            augment.load_state_dict(shared["augment"])
        if lecam is not None and shared.get("lecam") is not None:
            lecam.load_state_dict(shared["lecam"])
        tracker_run_id = shared.get("tracker_run_id")
        noise.set_state(shared["noise"].to(noise.get_state().device))
        if own is not None:
            torch.set_rng_state(own["cpu_rng"])

    loader = make_loader(
        StreamSpec(
            urls=expand_shards(cfg.data.shards),
            batch_per_gpu=batch_per_gpu,
            resolution=cfg.model.resolution,
            channels=cfg.model.channels,
            seed=t.seed,
            rank=rank,
            restart=restart,
            shuffle_buffer=cfg.data.shuffle_buffer,
            xflip=cfg.data.xflip,
        ),
        num_workers=cfg.data.num_workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)

    total_nimg = int(t.kimg * 1000)
    reporter = Reporter(run_dir, t.kimg, nimg / 1000, enabled=strategy.is_main)
    trackers = Trackers(
        cfg.tracking,
        run_dir,
        {**to_dict(cfg), "env": environment_summary(world, str(device))},
        enabled=strategy.is_main,
        run_id=tracker_run_id,
        say=reporter.message,
    )
    reporter.message(
        f"gandist: run {run_dir} | {world} process(es) on {device.type} | batch {t.batch} ({batch_per_gpu}/rank) | "
        f"precision {strategy.precision} | {t.kimg} kimg" + (f" | resumed from {resume_from}" if resume_from else "")
    )

    def write_grid() -> None:
        if strategy.is_main:
            with torch.no_grad(), strategy.autocast():
                images = G_ema(grid_z, grid_c)
            save_grid(images, run_dir / "samples" / f"fakes-{nimg / 1000:010.3f}kimg.png")
            if cfg.tracking.log_images:
                trackers.log_image("samples/fakes", make_grid(images), f"G_ema at {nimg / 1000:.3f} kimg", step)

    def save(at_step: int) -> Path:
        for module in (G, D, G_ema):
            strategy.sync_buffers(module)
        return checkpoint.save_checkpoint(
            run_dir,
            at_step,
            shared_state=lambda: {
                "G": G.state_dict(),
                "D": D.state_dict(),
                "G_ema": G_ema.state_dict(),
                **{f"opt_{n}": strategy.optimizer(n).state_dict() for n in ("G", "D")},
                **{f"scaler_{n}": strategy.scaler(n).state_dict() for n in ("G", "D")},
                "nimg": nimg,
                "step": at_step,
                "restart": restart,
                "noise": noise.get_state(),
                "world_size": world,
                "tracker_run_id": trackers.run_id,
                "config": to_dict(cfg),
                "augment": augment.state_dict(),
                "lecam": lecam.state_dict() if lecam is not None else None,
            },
            rank_state={"cpu_rng": torch.get_rng_state()},
            rank=rank,
            barrier=strategy.barrier,
            keep=t.keep_checkpoints,
        )

    if nimg == 0:
        write_grid()
    tick_start_nimg, tick_start_time, wait_time = nimg, time.perf_counter(), 0.0
    next_tick = nimg + t.tick_kimg * 1000
    next_snapshot = nimg + t.snapshot_kimg * 1000
    next_checkpoint = nimg + t.checkpoint_kimg * 1000 if t.checkpoint_kimg > 0 else float("inf")
    steps_this_job = 0
    metrics_every = cfg.metrics.interval_kimg * 1000
    next_metrics = (nimg // metrics_every + 1) * metrics_every if evaluator is not None else float("inf")
    schedule = t.lr_warmup_kimg > 0 or t.lr_decay != "constant"
    ada_nimg = 0

    def run_metrics() -> None:
        nonlocal tick_start_time
        strategy.sync_buffers(G_ema)  # BatchNorm statistics differ per rank: measure rank 0's G_ema everywhere
        results = evaluator(G_ema, cfg.model.z_dim, num_classes, seed=t.seed)
        for key, value in results.items():
            stats.add(key, torch.tensor(value, device=device))
        if strategy.is_main:
            with (run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"kimg": round(nimg / 1000, 3), "step": step, **results}) + "\n")
            reporter.message(f"gandist: metrics at {nimg / 1000:.3f} kimg: " + json.dumps(results))
        tick_start_time += results["metrics/seconds"]  # keep images_per_s about training

    while nimg < total_nimg and not (t.max_steps and steps_this_job >= t.max_steps):
        t_wait = time.perf_counter()
        images, labels = next(batches)
        wait_time += time.perf_counter() - t_wait
        if step == 0 and strategy.is_main:
            reals = images[: t.grid_size]
            save_grid(reals, run_dir / "samples" / "reals.png")
            if cfg.tracking.log_images:
                trackers.log_image("samples/reals", make_grid(reals), "real training images", step)
        real = to_device_float(images, device, memory_format)
        c_real = class_labels(labels, num_classes, cfg.data.shards).to(device) if num_classes else None
        if schedule:
            factor = lr_multiplier(nimg / 1000, t.kimg, t.lr_warmup_kimg, t.lr_decay, t.lr_final)
            for name in ("G", "D"):
                for group in strategy.optimizer(name).param_groups:
                    group["lr"] = base_lr[name] * factor

        z_d = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=noise)
        z_g = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=noise)
        mine = slice(rank * batch_per_gpu, (rank + 1) * batch_per_gpu)
        c_d = c_g = None
        if num_classes:
            c_d = torch.randint(num_classes, (t.batch,), device=device, generator=noise)[mine]
            c_g = torch.randint(num_classes, (t.batch,), device=device, generator=noise)[mine]
        phases.d_phase(real, z_d[mine], c_real, c_d)
        phases.g_phase(z_g[mine], c_g)
        if t.r1_gamma > 0 and step % t.r1_interval == 0:
            phases.r1_phase(real, c_real, t.r1_gamma, t.r1_interval)
        ada_nimg += t.batch
        if augment.adaptive and (step + 1) % cfg.augment.interval == 0:
            stats.add("augment/rt", augment.adjust(ada_nimg, strategy.reduce_mean))
            ada_nimg = 0
        if augment.ada_ops:
            stats.add("augment/p", augment.p)

        update_ema(G_ema, G, ema_beta(t.batch, nimg, t.ema_kimg, t.ema_rampup))
        nimg += t.batch
        step += 1
        steps_this_job += 1
        reporter.advance(nimg / 1000)

        done = nimg >= total_nimg or (t.max_steps and steps_this_job >= t.max_steps)
        if evaluator is not None and (nimg >= next_metrics or done):
            run_metrics()
            while next_metrics <= nimg:
                next_metrics += metrics_every
        if nimg >= next_tick or done:
            means = stats.means(strategy.reduce_mean)
            elapsed = time.perf_counter() - tick_start_time
            shown = nimg - tick_start_nimg
            record = {
                "kimg": round(nimg / 1000, 3),
                "step": step,
                "images_per_s": round(shown / max(elapsed, 1e-9), 1),
                "sec_per_kimg": round(elapsed / max(shown / 1000, 1e-9), 3),
                "data_wait_frac": round(wait_time / max(elapsed, 1e-9), 4),
                **{k: round(v, 5) for k, v in means.items()},
            }
            for name in ("G", "D"):
                record[f"lr/{name}"] = strategy.optimizer(name).param_groups[0]["lr"]
                if strategy.scaler(name).is_enabled():
                    record[f"loss_scale/{name}"] = strategy.scaler(name).get_scale()
            if device.type == "cuda":
                record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            reporter.tick(record)
            trackers.log(record, step)
            tick_start_nimg, tick_start_time, wait_time = nimg, time.perf_counter(), 0.0
            while next_tick <= nimg:
                next_tick += t.tick_kimg * 1000
        if nimg >= next_snapshot and not done:
            write_grid()
            while next_snapshot <= nimg:
                next_snapshot += t.snapshot_kimg * 1000
        if nimg >= next_checkpoint and not done:
            save(step)
            while next_checkpoint <= nimg:
                next_checkpoint += t.checkpoint_kimg * 1000

    write_grid()
    final = save(step)
    digests = gather_object([{"rank": rank, "G": param_digest(G), "D": param_digest(D), "G_ema": param_digest(G_ema)}])
    if strategy.is_main:
        in_sync = all(d[k] == digests[0][k] for d in digests for k in ("G", "D", "G_ema"))
        summary = {
            "kimg": round(nimg / 1000, 3),
            "step": step,
            "world_size": world,
            "checkpoint": str(final),
            "params_in_sync": in_sync,
            "rank_digests": digests,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        reporter.message(
            f"gandist: done at {nimg / 1000:.2f} kimg; samples in {run_dir / 'samples'}, checkpoint {final}"
        )
        if not in_sync:
            reporter.message(f"gandist: WARNING ranks hold different parameters: {digests}")
    trackers.finish()
    reporter.close()
    return run_dir
