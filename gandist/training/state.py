"""What a checkpoint holds, in one place: the nets, their optimizers, counters and random streams.

`TrainState` is saved by every rank together (checkpoint.py writes it atomically) and restored at
start-up or on a rollback. With the same world size and data settings, a resumed run continues
bit for bit where the uninterrupted one would have been: weights, optimizer moments, scaler, the
shared noise generator, each rank's CPU random state and its position in the data stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gandist.config import Config, ConfigError, to_dict
from gandist.strategy import Strategy
from gandist.strategy.base import param_digest  # noqa: F401 - where tests and tools have always found it
from gandist.training import checkpoint


@dataclass
class Progress:
    """Counters of a run: they survive restarts."""

    nimg: int = 0
    """Real images shown to D so far, over all ranks."""
    step: int = 0
    """D/G iterations so far."""
    restart: int = 0
    """How many times this run has been resumed."""
    skipped_steps: int = 0
    """Steps skipped by the non-finite guard."""
    rollbacks: int = 0
    """Rollbacks to an earlier checkpoint after persistent non-finite steps."""
    tracker_run_id: str | None = None
    """The experiment tracker's run id, so a resumed job continues the same dashboard run."""
    data_key: str = ""
    """The data settings the stream was made for (shards, seed, ranks, workers, batch, shuffle, flip)."""
    data_stream: int = 0
    """Which stream is in use: 0 at the start, the restart count after a change of data settings."""
    data_batches: int = 0
    """Batches each rank has taken from that stream: a resumed run skips them and continues exactly."""


@dataclass
class TrainState:
    """The nets and everything else a checkpoint restores."""

    cfg: Config
    strategy: Strategy
    G: nn.Module
    D: nn.Module
    noise: torch.Generator
    augment: object | None = None
    """The augmentation pipeline (its adaptive probability is state), or None."""
    lecam: object | None = None
    """The LeCam regulariser (its EMAs of D's outputs are state), or None."""
    optimizers: dict = field(default_factory=dict)
    """Each net's optimizer settings in effect (OptimizerConfig): after a resume they win over the checkpoint's."""
    progress: Progress = field(default_factory=Progress)

    def shared_state(self, nets: dict) -> dict:
        """Rank 0's part: identical on every rank (nets after buffer sync, optimizers, counters).

        `nets` is the strategy's checkpoint_state(): full G, D and G_ema, and optimizer and scaler states
        where the strategy keeps them whole (DeepSpeed keeps its own in ds_G/, ds_D/; ZeRO-3 keeps the
        weights partitioned in one file per rank).
        """
        p = self.progress
        return {
            **nets,
            "progress": vars(p).copy(),
            "nimg": p.nimg,
            "step": p.step,
            "noise": self.noise.get_state(),
            "world_size": self.strategy.world_size,
            "tracker_run_id": p.tracker_run_id,
            "config": to_dict(self.cfg),
            "augment": self.augment.state_dict() if self.augment is not None else None,
            "lecam": self.lecam.state_dict() if self.lecam is not None else None,
        }

    def rank_state(self) -> dict:
        """Each rank's own part: its random states."""
        own = {"cpu_rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            own["cuda_rng"] = torch.cuda.get_rng_state()
        return own

    def save(self, run_dir: Path, delay_s: float = 0.0) -> Path:
        """Write a checkpoint of the current step; every rank must call this."""
        nets = self.strategy.checkpoint_state()  # a collective (buffers synced across ranks)
        return checkpoint.save_checkpoint(
            run_dir,
            self.progress.step,
            shared_state=lambda: self.shared_state(nets),
            rank_state=self.rank_state(),
            rank=self.strategy.rank,
            all_ok=self.strategy.all_ok,
            keep=self.cfg.train.keep_checkpoints,
            delay_s=delay_s,
            collective_save=self.strategy.save_engine_states,
        )

    def load(self, path: Path) -> None:
        """Restore from a complete checkpoint folder, refusing one made for other nets."""
        shared, own = checkpoint.load_checkpoint(path, self.strategy.rank)
        check_compatible(path, shared.get("config", {}), self.cfg)
        try:
            self.strategy.load_state(path, shared)  # G, D, G_ema and the optimizers
        except ConfigError:
            raise
        except (KeyError, RuntimeError, ValueError) as e:
            raise checkpoint.CheckpointError(f"checkpoint {path} does not fit this run's nets: {e}") from e
        self._apply_optimizer_settings()
        self.noise.set_state(shared["noise"].to(self.noise.get_state().device))
        for name in ("augment", "lecam"):
            if getattr(self, name) is not None and shared.get(name) is not None:
                getattr(self, name).load_state_dict(shared[name])
        saved = shared.get("progress", {"nimg": shared["nimg"], "step": shared["step"]})
        fresh = Progress(**{k: v for k, v in saved.items() if k in Progress.__dataclass_fields__})
        for key, value in vars(fresh).items():  # in place: the loop holds on to this object
            setattr(self.progress, key, value)
        if own is not None and shared.get("world_size") == self.strategy.world_size:
            torch.set_rng_state(own["cpu_rng"])
            if "cuda_rng" in own and torch.cuda.is_available():
                torch.cuda.set_rng_state(own["cuda_rng"])

    def _apply_optimizer_settings(self) -> None:
        """The config's learning rates, betas, eps and weight decay, over those a checkpoint's optimizer state
        brought back (its moments stay): a resumed job trains with what its config.yaml says."""
        for name, opt_cfg in self.optimizers.items():
            for group in self.strategy.optimizer(name).param_groups:
                group.update(
                    lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay
                )


def data_key(cfg: Config, world_size: int) -> str:
    """The settings that fix each rank's data stream: if they are unchanged, a resume continues it exactly."""
    d = cfg.data
    return (
        f"{d.shards}|seed={cfg.train.seed}|world={world_size}|workers={d.num_workers}|batch={cfg.train.batch}|"
        f"shuffle={d.shuffle_buffer}|xflip={d.xflip}"
    )


def check_compatible(path: Path, saved: dict, cfg: Config) -> None:
    """Raise ConfigError naming each model setting that differs between a checkpoint and the config."""
    current = to_dict(cfg)
    diffs = [
        f"model.{key}: checkpoint {value!r}, config {current['model'].get(key)!r}"
        for key, value in saved.get("model", {}).items()
        if current["model"].get(key) != value
    ]
    if diffs:
        raise ConfigError(
            f"checkpoint {path} was made for other nets ({'; '.join(diffs)}): "
            "use the same model settings, another run_name, or resume=never"
        )
