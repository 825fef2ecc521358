"""Experiment trackers (Weights & Biases, TensorBoard): rank 0 only, once per tick.

A `Trackers` object fans scalars and images out to every tracker in `tracking.report_to`. It
gates itself: on ranks other than 0 it creates nothing and every call returns at once.

W&B never prompts and never hangs: without an API key (`WANDB_API_KEY` or a netrc entry) it
runs offline into the run folder and says how to `wandb sync` afterwards; `WANDB_MODE` (e.g.
`disabled`) is respected. The run id is chosen once per run folder and stored in checkpoints, so
a resumed or requeued job continues the same W&B run (`resume="allow"`). Scalars are logged with
the training step as W&B's step, so ticks replayed after a resume are dropped rather than
duplicated, and plotted against `progress/kimg`.
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import secrets
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from gandist.config import TrackingConfig
from gandist.files import atomic_write_text

# stats.jsonl keys -> dashboard keys (keys that already hold a "/" pass through unchanged)
_PREFIX = {
    "kimg": "progress/kimg",
    "step": "progress/step",
    "images_per_s": "perf/images_per_s",
    "sec_per_kimg": "perf/sec_per_kimg",
    "data_wait_frac": "perf/data_wait_frac",
    "gpu_mem_gib": "perf/gpu_mem_gib",
}
ID_FILE = "tracking.json"


def dashboard_key(key: str) -> str:
    """The dashboard name of a stats.jsonl key."""
    return _PREFIX.get(key, key if "/" in key else f"misc/{key}")


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def environment_summary(world_size: int, device: str) -> dict[str, Any]:
    """World size, device, versions and git commit, for the tracker's config."""
    import accelerate
    import torch

    summary = {
        "world_size": world_size,
        "device": device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "gandist": __import__("gandist").__version__,
        "host": platform.node(),
    }
    try:
        summary["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        summary["git_commit"] = None
    return summary


class Trackers:
    """W&B and/or TensorBoard for one run; a no-op on ranks other than 0 or with report_to none."""

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: Path,
        config: dict,
        enabled: bool,
        run_id: str | None = None,
        say=print,
    ):
        self.wandb_run = None
        self.tb_writer = None
        self.run_id = run_id
        self.say = say
        names = [n for n in cfg.report_to if n != "none"]
        if not enabled or not names:
            return
        id_file = run_dir / ID_FILE
        if self.run_id is None and id_file.is_file():
            self.run_id = json.loads(id_file.read_text()).get("run_id")
        if self.run_id is None:
            self.run_id = secrets.token_hex(4)
        atomic_write_text(id_file, json.dumps({"run_id": self.run_id}) + "\n")
        if "wandb" in names:
            self._start_wandb(cfg, run_dir, config)
        if "tensorboard" in names:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "tracking.report_to includes 'tensorboard' but the tensorboard package is missing: "
                    "pip install tensorboard"
                ) from e
            self.tb_writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def _start_wandb(self, cfg: TrackingConfig, run_dir: Path, config: dict) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError(
                "tracking.report_to includes 'wandb' but wandb is not installed: pip install wandb"
            ) from e
        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # empty means unset; wandb itself would reject it
        mode = os.environ.get("WANDB_MODE") or cfg.wandb_mode
        if mode == "auto":
            mode = "online" if _has_wandb_key() else "offline"
            if mode == "offline":
                self.say(
                    "gandist: no W&B API key found: logging offline (set WANDB_API_KEY or `wandb login` for online)"
                )
        self.wandb_run = wandb.init(
            project=cfg.project or os.environ.get("WANDB_PROJECT") or "gandist",
            entity=cfg.entity or None,
            name=cfg.name or run_dir.name,
            group=cfg.group or None,
            tags=list(cfg.tags) or None,
            notes=cfg.notes or None,
            id=self.run_id,
            resume="allow",
            dir=str(run_dir),
            mode=mode,
            config=config,
        )
        self.wandb_run.define_metric("progress/kimg")
        self.wandb_run.define_metric("*", step_metric="progress/kimg")
        if mode == "offline":
            self.say(
                f"gandist: W&B run {self.run_id} offline in {self.wandb_run.dir}; upload with: "
                f"wandb sync {Path(self.wandb_run.dir).parent}"
            )

    @property
    def active(self) -> bool:
        return self.wandb_run is not None or self.tb_writer is not None

    def log(self, record: dict, step: int) -> None:
        """Log one tick's scalars (stats.jsonl keys) at a training step."""
        if not self.active:
            return
        scalars = {dashboard_key(k): v for k, v in record.items() if isinstance(v, (int, float))}
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)
        if self.tb_writer is not None:
            for key, value in scalars.items():
                self.tb_writer.add_scalar(key, value, global_step=step)

    def log_image(self, key: str, image: np.ndarray, caption: str, step: int) -> None:
        """Log an H x W (x 3) uint8 image, e.g. a sample grid."""
        if not self.active:
            return
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(image, caption=caption)}, step=step)
        if self.tb_writer is not None:
            self.tb_writer.add_image(key, image, global_step=step, dataformats="HW" if image.ndim == 2 else "HWC")

    def finish(self) -> None:
        """Flush and close; says where an offline run lies and how to upload it."""
        if self.wandb_run is not None:
            offline = self.wandb_run.settings.mode == "offline"
            folder = Path(self.wandb_run.dir).parent
            self.wandb_run.finish()
            if offline:
                self.say(f"gandist: W&B run saved offline; upload with: wandb sync {folder}")
            self.wandb_run = None
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None
