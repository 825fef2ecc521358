"""The training loop: alternating D and G phases, counted in images shown to D (kimg).

    set up: process group, run folder, G, D, G_ema, Adam per net, strategy, per-rank shard stream
    while nimg < train.kimg * 1000:
        real  <- next batch of this rank (uint8 on the host) -> device, [-1, 1]
        D phase: fake = G(z).detach();  L_D = d_loss(D(real), D(fake));  step D   (per micro-batch:
        G phase: D frozen (raw module);  L_G = g_loss(D(G(z')));           step G    backward; step at the last)
        G_ema  <- lerp towards G (gathered under ZeRO-3) with a half-life of train.ema_kimg
        nimg += global batch
        once per tick:     reduce stats across ranks; rank 0 writes stats.jsonl, updates the bar
        every snapshot:    rank 0 writes a G_ema grid of the fixed noise to samples/
        every checkpoint:  all ranks save (checkpoint.py; DeepSpeed engines into ds_G/, ds_D/)
    at the end: grid, checkpoint, parameter checksums of every rank in summary.json

z is drawn for the global batch from one generator shared by all ranks and each rank takes its
slice, so a run's noise does not depend on the number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from gandist import checkpoint
from gandist.config import Config, ConfigError, to_dict, to_yaml, validate
from gandist.data import StreamSpec, expand_shards, make_loader, to_device_float
from gandist.ema import ema_beta, make_ema, update_ema
from gandist.images import save_grid
from gandist.losses import get_losses
from gandist.models import build_models
from gandist.strategy import Strategy, make_strategy
from gandist.tracking import Reporter, TickStats


@dataclass
class Phases:
    """The per-step work of a GAN, independent of where its batch and noise come from."""

    strategy: Strategy
    d_loss: Callable[..., torch.Tensor]
    g_loss: Callable[..., torch.Tensor]
    stats: TickStats

    def d_phase(self, real: torch.Tensor, z: torch.Tensor) -> None:
        """One D step on this rank's real batch and fakes from z (G not trained)."""
        s = self.strategy
        G, D = s.train_forward("G"), s.train_forward("D")
        with s.autocast():
            with torch.no_grad():
                fake = G(z)
            real_logits = D(real)
            fake_logits = D(fake)
            loss = self.d_loss(real_logits.float(), fake_logits.float())
        self._record("D", s.backward_and_step("D", loss))
        self.stats.add("loss/D", loss)
        self.stats.add("score/real", real_logits.detach().float().mean())
        self.stats.add("score/fake", fake_logits.detach().float().mean())

    def g_phase(self, z: torch.Tensor) -> None:
        """One G step through a frozen D."""
        s = self.strategy
        G = s.train_forward("G")
        with s.frozen("D") as D, s.autocast():
            loss = self.g_loss(D(G(z)).float())
        self._record("G", s.backward_and_step("G", loss))
        self.stats.add("loss/G", loss)

    def _record(self, name: str, step_stats: dict[str, torch.Tensor]) -> None:
        if not step_stats:  # a micro-batch that did not step (gradient accumulation)
            return
        if "grad_norm" in step_stats:
            self.stats.add(f"grad_norm/{name}", step_stats["grad_norm"])
        if "skipped" in step_stats:
            self.stats.add(f"skipped_frac/{name}", step_stats["skipped"])

    def step(self, real: torch.Tensor, z_d: torch.Tensor, z_g: torch.Tensor) -> None:
        """One D step then one G step on this rank's batch, each in strategy.accumulation micro-batches."""
        n = self.strategy.accumulation
        for real_i, z_i in zip(real.chunk(n), z_d.chunk(n)):
            self.d_phase(real_i, z_i)
        for z_i in z_g.chunk(n):
            self.g_phase(z_i)


def build_nets(cfg: Config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """G and D from the model config, with identical initial weights on every rank (seeded)."""
    m = cfg.model
    torch.manual_seed(cfg.train.seed)
    return build_models(m.arch, m.resolution, m.channels, m.z_dim, m.g_width, m.d_width)


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
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
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
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    G_ema = make_ema(G)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
    d_loss, g_loss = get_losses(t.loss)
    stats = TickStats(device)
    phases = Phases(strategy, d_loss, g_loss, stats)

    noise = torch.Generator(device=device).manual_seed(t.seed + 1)
    grid_z = torch.randn(t.grid_size, cfg.model.z_dim, generator=torch.Generator().manual_seed(t.seed + 2)).to(device)
    nimg, step, restart = 0, 0, 0

    resume_from = _resume_path(cfg, run_dir)
    if resume_from is not None:
        shared, own = checkpoint.load_checkpoint(resume_from, rank)
        strategy.load_state(resume_from, shared)
        G_ema.load_state_dict(shared["G_ema"])
        nimg, step, restart = shared["nimg"], shared["step"], shared["restart"] + 1
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
    reporter.message(
        f"gandist: run {run_dir} | {world} process(es) on {device.type} | batch {t.batch} ({batch_per_gpu}/rank) | "
        f"precision {strategy.precision} | {strategy.describe()} | {t.kimg} kimg"
        + (f" | resumed from {resume_from}" if resume_from else "")
    )

    def write_grid() -> None:
        if strategy.is_main:
            with torch.no_grad(), strategy.autocast():
                images = G_ema(grid_z)
            save_grid(images, run_dir / "samples" / f"fakes-{nimg / 1000:010.3f}kimg.png")

    def save(at_step: int) -> Path:
        for module in (G, D, G_ema):
            strategy.sync_buffers(module)
        nets = strategy.checkpoint_state()  # G, D (gathered under ZeRO-3: every rank takes part), optimizers
        return checkpoint.save_checkpoint(
            run_dir,
            at_step,
            shared_state=lambda: {
                **nets,
                "G_ema": G_ema.state_dict(),
                "nimg": nimg,
                "step": at_step,
                "restart": restart,
                "noise": noise.get_state(),
                "world_size": world,
                "config": to_dict(cfg),
            },
            rank_state={"cpu_rng": torch.get_rng_state()},
            rank=rank,
            barrier=strategy.barrier,
            keep=t.keep_checkpoints,
            collective_save=strategy.save_engine_states,
        )

    if nimg == 0:
        write_grid()
    tick_start_nimg, tick_start_time, wait_time = nimg, time.perf_counter(), 0.0
    next_tick = nimg + t.tick_kimg * 1000
    next_snapshot = nimg + t.snapshot_kimg * 1000
    next_checkpoint = nimg + t.checkpoint_kimg * 1000 if t.checkpoint_kimg > 0 else float("inf")
    steps_this_job = 0

    while nimg < total_nimg and not (t.max_steps and steps_this_job >= t.max_steps):
        t_wait = time.perf_counter()
        images, _labels = next(batches)
        wait_time += time.perf_counter() - t_wait
        real = to_device_float(images, device, memory_format)

        z_d = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=noise)
        z_g = torch.randn(t.batch, cfg.model.z_dim, device=device, generator=noise)
        mine = slice(rank * batch_per_gpu, (rank + 1) * batch_per_gpu)
        phases.step(real, z_d[mine], z_g[mine])

        with strategy.gathered("G") as G_full:
            update_ema(G_ema, G_full, ema_beta(t.batch, nimg, t.ema_kimg, t.ema_rampup))
        nimg += t.batch
        step += 1
        steps_this_job += 1
        reporter.advance(nimg / 1000)

        done = nimg >= total_nimg or (t.max_steps and steps_this_job >= t.max_steps)
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
            if device.type == "cuda":
                record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            reporter.tick(record)
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
    with strategy.gathered("G") as G_full, strategy.gathered("D") as D_full:
        my_digests = {"rank": rank, "G": param_digest(G_full), "D": param_digest(D_full), "G_ema": param_digest(G_ema)}
    digests = gather_object([my_digests])
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
    reporter.close()
    return run_dir
