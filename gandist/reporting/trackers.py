"""Experiment trackers through accelerate's tracker API: rank 0 only, once per tick.

    tracker_names(cfg.tracking)      report_to resolved ('auto'), checked installed: Accelerator(log_with=...)
    Trackers(accelerator, ...)       init_trackers(project, init_kwargs) in the run folder; the config per tracker
    .log(record, nimg)               accelerator.log: every tracker accelerate supports
    .log_image(key, image, ...)      images where accelerate has no common call: W&B media, TensorBoard, MLflow
    .finish()

Every tracker accelerate supports can be named. W&B, TensorBoard and MLflow get more: sample grids as
images on a step slider, the config in the form each shows best, runs that continue across resumes.

Steps are images shown to D (nimg), the same for every tracker: TensorBoard and MLflow plot against
kimg (x 1000) and W&B plots against `progress/kimg`. A resumed job skips the ticks an earlier job of
the run already logged (the last logged step is kept in `tracking.json`), so no tracker shows a tick twice.

W&B never prompts and never hangs: without credentials (`WANDB_API_KEY` or `wandb login`) it runs offline
into the run folder and says how to `wandb sync` afterwards; `WANDB_MODE` is respected. The run id is
chosen once per run folder and kept in checkpoints, so a resumed or requeued job continues the same W&B run;
MLflow's run id (MLflow chooses it) is kept in `tracking.json`. MLflow writes to MLFLOW_TRACKING_URI, else
to a local file store `<output_dir>/mlruns` shared by the runs of that folder.
"""

from __future__ import annotations

import json
import netrc
import os
import platform
import secrets
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gandist.config import ConfigError, TrackingConfig
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
NO_TRACKER = (
    "gandist: no experiment tracker (no W&B credentials): `wandb login` to log to W&B, or set "
    "tracking.report_to=wandb (offline), tensorboard, mlflow, ..."
)
_INSTALL = {
    "wandb": "pip install wandb",
    "tensorboard": "pip install 'gandist[tensorboard]'",
    "mlflow": "pip install 'gandist[mlflow]'",
}


def dashboard_key(key: str) -> str:
    """The dashboard name of a stats.jsonl key."""
    return _PREFIX.get(key, key if "/" in key else f"misc/{key}")


def has_wandb_credentials(environ: Mapping[str, str] = os.environ) -> bool:
    """An API key in the environment, or a `wandb login` (netrc entry for the W&B host)."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def tracker_names(cfg: TrackingConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """The trackers to start, for `Accelerator(log_with=...)`.

    auto: W&B where credentials exist or WANDB_MODE is set, else none. A named tracker that is not installed
    is an error saying what to install.
    """
    names = [n for n in cfg.report_to if n != "none"]
    if names == ["auto"]:
        return ["wandb"] if has_wandb_credentials(environ) or environ.get("WANDB_MODE") else []
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in available:
            raise ConfigError(
                f"key 'tracking.report_to' includes {name!r}, which is not installed: "
                f"{_INSTALL.get(name, f'pip install {name}')}"
            )
    return names


def environment_summary(world_size: int, device: str) -> dict[str, Any]:
    """World size, device, versions and git commit, for the tracker's config."""
    import accelerate
    import torch

    summary = {
        "world_size": world_size,
        "device": device,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that YAML cannot write
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


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'kimg': 40.0}} -> {'train.kimg': 40.0}; lists as JSON text (hyperparameter tables want scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


class Trackers:
    """The run's trackers in the accelerator (rank 0); a no-op on other ranks and without trackers.

    `accelerator` was made with `log_with=tracker_names(cfg)`; `config` is what the trackers store; `run_id`
    the W&B id a checkpoint holds; `restart`: new tracker runs, even where tracking.json names earlier ones.
    """

    def __init__(
        self,
        accelerator,
        cfg: TrackingConfig,
        run_dir: Path,
        config: dict,
        run_id: str | None = None,
        say=print,
        restart: bool = False,
    ):
        self.accelerator, self.cfg, self.run_dir, self.say = accelerator, cfg, run_dir, say
        self.names = [str(t) for t in accelerator.log_with]
        self.run_id, self.mlflow_run_id = run_id, None
        self.logged_before = -1  # the last step an earlier job of this run logged
        self.offline_wandb = False
        if not accelerator.is_main_process:
            return
        if not self.names:
            if cfg.report_to == ["auto"]:
                say(NO_TRACKER)
            return
        # the runs an earlier job of this run folder started continue, unless this job starts over (resume=never)
        saved = json.loads((run_dir / ID_FILE).read_text()) if (run_dir / ID_FILE).is_file() and not restart else {}
        self.run_id = self.run_id or saved.get("run_id") or secrets.token_hex(4)
        self.mlflow_run_id = saved.get("mlflow_run_id")
        self.logged_before = saved.get("last_step", -1)
        self._save()
        project = cfg.project or os.environ.get("WANDB_PROJECT") or "gandist"
        accelerator.project_configuration.logging_dir = str(run_dir)  # TensorBoard: <run>/<project>/
        accelerator.init_trackers(project, init_kwargs=self._init_kwargs())
        for tracker in accelerator.trackers:
            self._store_config(tracker, config)
        if "mlflow" in self.names:
            self.mlflow_run_id = accelerator.get_tracker("mlflow", unwrap=True).info.run_id
            self._save()
        if "wandb" in self.names:
            run = accelerator.get_tracker("wandb", unwrap=True)
            run.define_metric("progress/kimg")
            run.define_metric("*", step_metric="progress/kimg")
            if self.offline_wandb:
                folder = Path(run.dir).parent
                say(f"gandist: W&B run {self.run_id} offline in {folder}; upload with: wandb sync {folder}")

    def _save(self, last_step: int | None = None) -> None:
        state = {"run_id": self.run_id, "mlflow_run_id": self.mlflow_run_id}
        state["last_step"] = max(self.logged_before, last_step if last_step is not None else -1)
        atomic_write_text(self.run_dir / ID_FILE, json.dumps(state) + "\n")

    def _init_kwargs(self) -> dict[str, dict]:
        cfg, kwargs = self.cfg, {}
        if "wandb" in self.names:
            if os.environ.get("WANDB_MODE") == "":
                del os.environ["WANDB_MODE"]  # empty means unset; wandb itself would reject it
            mode = os.environ.get("WANDB_MODE") or cfg.wandb_mode
            if mode == "auto":
                mode = "online" if has_wandb_credentials() else "offline"
                if mode == "offline":
                    self.say("gandist: no W&B credentials: logging offline (`wandb login` or WANDB_API_KEY for online)")
            self.offline_wandb = mode == "offline"
            kwargs["wandb"] = {
                "entity": cfg.entity or None,
                "name": cfg.name or self.run_dir.name,
                "group": cfg.group or None,
                "tags": list(cfg.tags) or None,
                "notes": cfg.notes or None,
                "id": self.run_id,
                "resume": "allow",
                "dir": str(self.run_dir),
                "mode": mode,
            }
        if "mlflow" in self.names:
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                import mlflow

                # the file store is in maintenance mode in MLflow 3 and refused unless allowed; it needs no server
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((self.run_dir.parent.resolve() / "mlruns").as_uri())
            kwargs["mlflow"] = {
                "run_id": self.mlflow_run_id,
                "run_name": cfg.name or self.run_dir.name,
                "description": cfg.notes or None,
                "tags": {tag: "" for tag in cfg.tags} or None,
            }
        return kwargs

    def _store_config(self, tracker, config: dict) -> None:
        """The resolved config (with its env section) in the form each tracker shows best."""
        if tracker.name == "wandb":
            tracker.store_init_configuration(config)
        elif tracker.name == "tensorboard":
            tracker.store_init_configuration(flatten(config))  # the HParams tab
            text = "    " + yaml.safe_dump(config, sort_keys=False).replace("\n", "\n    ")  # markdown code block
            tracker.writer.add_text("config", text, global_step=max(self.logged_before, 0))
        elif tracker.name == "mlflow":
            import mlflow

            # MLflow refuses to change a parameter: a resumed run keeps the first job's values as parameters
            logged = mlflow.get_run(mlflow.active_run().info.run_id).data.params
            tracker.store_init_configuration({k: v for k, v in flatten(config).items() if k not in logged})
            mlflow.log_dict(config, "config.yaml")  # this job's config, whole
        else:
            tracker.store_init_configuration(flatten(config))

    @property
    def active(self) -> bool:
        return self.accelerator.is_main_process and bool(self.names)

    def _fresh(self, step: int) -> bool:
        """False for a step an earlier job of this run already logged (replayed after a resume)."""
        return self.active and step > self.logged_before

    def log(self, record: dict, step: int) -> None:
        """Log one tick's scalars (stats.jsonl keys) at `step` (images shown)."""
        if not self._fresh(step):
            return
        scalars = {dashboard_key(k): v for k, v in record.items() if isinstance(v, (int, float))}
        self.accelerator.log(scalars, step=step)
        self._save(last_step=step)

    def log_image(self, key: str, image: np.ndarray, caption: str, step: int) -> None:
        """Log an H x W (x 3) uint8 image, e.g. a sample grid, where the tracker shows images at a step."""
        if not self._fresh(step):
            return
        for tracker in self.accelerator.trackers:
            if tracker.name == "wandb":
                import wandb

                tracker.run.log({key: wandb.Image(image, caption=caption)}, step=step)
            elif tracker.name == "tensorboard":
                tracker.writer.add_image(key, image, global_step=step, dataformats="HW" if image.ndim == 2 else "HWC")
            elif tracker.name == "mlflow":
                import mlflow

                mlflow.log_image(image, key=key, step=step)

    def finish(self) -> None:
        """Flush and close; says where an offline W&B run lies and how to upload it."""
        if not self.active:
            return
        folder = None
        if self.offline_wandb:
            folder = Path(self.accelerator.get_tracker("wandb", unwrap=True).dir).parent
        for tracker in self.accelerator.trackers:
            tracker.finish()  # not accelerator.end_training(): that also ends the process group, the strategy's job
        self.accelerator.trackers.clear()
        self.names = []
        if folder is not None:
            self.say(f"gandist: W&B run saved offline; upload with: wandb sync {folder}")
