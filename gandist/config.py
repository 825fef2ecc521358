"""Typed run configuration: dataclasses with defaults, YAML files holding differences, dotted overrides.

A config is built in three layers, later ones winning:

    defaults (the dataclasses below)  <-  --config file.yaml  <-  key.sub=value overrides

Unknown keys, values of the wrong type and impossible values raise `ConfigError`, which names the
key, the value and where it came from. Where to train (processes, nodes) is not configured here:
that is the launcher's job (`launch/`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key and value in the message."""


@dataclass
class ModelConfig:
    """What G and D are."""

    arch: Literal["dcgan", "resnet", "stylegan2"] = "dcgan"
    """Architecture of G and D: dcgan, resnet (SNGAN: spectral-norm D, projection head) or stylegan2 (compact)."""
    resolution: int = 32
    """Image side in pixels, a power of two: 32, 64 or 128; stylegan2 also 256, 512 and 1024."""
    channels: int = 1
    """Image channels: 1 (grey) or 3 (RGB)."""
    z_dim: int = 100
    """Length of the latent vector z."""
    g_width: int = 64
    """Channels of G's last hidden layer (ngf in Radford et al.); doubles at each lower resolution."""
    d_width: int = 64
    """Channels of D's first layer (ndf); doubles at each lower resolution."""
    num_classes: int = 0
    """Classes of a class-conditional G and D (labels from the shards' cls, 0..num_classes-1); 0: unconditional."""
    g_shared_dim: int = 0
    """ResNet G only: > 0 gives BigGAN's hierarchical z and a shared class embedding of this size: z is split into a
    chunk for the first layer and one per block, and each block's BatchNorms take their scale and shift linearly
    from [the class embedding, the block's chunk] (unconditional G: the chunk alone); 0: z at the first layer
    only, a scale and shift per class."""
    d_mbstd: int = 0
    """ResNet D only: group size of a minibatch standard deviation layer at 4x4 (StyleGAN's; 4 is usual); 0: none."""
    d_spectral_norm: bool = True
    """ResNet D only: spectral normalisation of every layer (SNGAN's); false: plain layers, whose smoothness is then
    up to a gradient penalty (R1: the train section's r1_gamma, as StyleGAN2 and R3GAN regularise D)."""
    channel_base: int = 0
    """StyleGAN2 only: > 0 gives StyleGAN2's channel schedule min(channel_base / r, channel_max) at r x r px for G
    and D (the paper: 16384 at 256 px, 32768 at 1024 px) instead of the compact one from g_width and d_width."""
    channel_max: int = 512
    """StyleGAN2 only, with channel_base > 0: the most channels of any layer."""
    mapping_layers: int = 2
    """StyleGAN2 only: layers of the mapping network z -> w (the paper: 8)."""
    activation_checkpointing: bool = False
    """Recompute each block of G and D in the backward pass instead of keeping its activations: less memory per
    image for about one more forward pass of compute (the same gradients)."""

    def validate(self) -> None:
        """Raise ConfigError for well-typed but impossible values."""
        res = self.resolution
        sizes = (32, 64, 128, 256, 512, 1024) if self.arch == "stylegan2" else (32, 64, 128)
        if res not in sizes:
            raise ConfigError(
                f"key 'model.resolution' must be a power of two among {', '.join(map(str, sizes))} for "
                f"model.arch={self.arch}, got {res}" + ("" if self.arch == "stylegan2" else " (stylegan2 goes to 1024)")
            )
        if self.channels not in (1, 3):
            raise ConfigError(f"key 'model.channels' must be 1 or 3, got {self.channels}")
        for key in ("z_dim", "g_width", "d_width"):
            _at_least(f"model.{key}", getattr(self, key), 1, "a positive integer")
        if self.g_shared_dim < 0 or (self.g_shared_dim > 0 and self.arch != "resnet"):
            raise ConfigError(
                f"key 'model.g_shared_dim' = {self.g_shared_dim}: a size >= 0, and > 0 only with model.arch=resnet "
                f"(got arch {self.arch!r})"
            )
        chunks = res.bit_length() - 2  # the ResNet G's blocks (log2(res) - 2) and its first layer
        if self.g_shared_dim > 0 and self.z_dim < chunks:
            raise ConfigError(
                f"key 'model.z_dim' = {self.z_dim}: with model.g_shared_dim > 0 z is split into {chunks} chunks at "
                f"{res} px (G's first layer and each block): at least {chunks}"
            )
        if self.d_mbstd < 0 or (self.d_mbstd > 0 and self.arch != "resnet"):
            raise ConfigError(
                f"key 'model.d_mbstd' = {self.d_mbstd}: a group size >= 0, and > 0 only with model.arch=resnet "
                f"(got arch {self.arch!r}; stylegan2's D always has the layer)"
            )
        if not self.d_spectral_norm and self.arch != "resnet":
            raise ConfigError(
                f"key 'model.d_spectral_norm' = false: only the resnet D has spectral norm (got arch {self.arch!r})"
            )
        _at_least("model.num_classes", self.num_classes, 0)
        _at_least("model.channel_base", self.channel_base, 0)
        for key in ("channel_max", "mapping_layers"):
            _at_least(f"model.{key}", getattr(self, key), 1, "a positive integer")
        for key, default in (("channel_base", 0), ("mapping_layers", 2)):
            if getattr(self, key) != default and self.arch != "stylegan2":
                raise ConfigError(
                    f"key 'model.{key}' = {getattr(self, key)} applies to model.arch=stylegan2 only (got {self.arch!r})"
                )
        if self.num_classes > 0 and self.arch == "dcgan":
            raise ConfigError(
                f"key 'model.num_classes' = {self.num_classes} needs a class-conditional architecture: "
                "set model.arch=resnet or model.arch=stylegan2 (the DCGAN is unconditional)"
            )


@dataclass
class OptimizerConfig:
    """Adam settings for one network."""

    lr: float = 2e-4
    """Learning rate."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam's (beta1, beta2)."""
    eps: float = 1e-8
    """Adam's epsilon."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    fused: bool | Literal["auto"] = "auto"
    """torch's fused Adam (one kernel for all parameters); auto: on when the nets train on a CUDA GPU."""

    def validate(self, name: str) -> None:
        """Raise ConfigError for impossible values; `name` is the section's key (G_opt, D_opt)."""
        if not self.lr > 0:
            raise ConfigError(f"key '{name}.lr' must be > 0, got {self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"key '{name}.betas' must lie in [0, 1), got {list(self.betas)}")


@dataclass
class DataConfig:
    """Where the training images come from and how they are read."""

    shards: str = ""
    """Shards: path, brace pattern, folder with index.json, pipe:/http(s) URL, comma list; empty: embedded sample."""
    num_workers: int = 1
    """DataLoader worker processes per rank (0: read in the training process)."""
    shuffle_buffer: int = 1000
    """Samples held in the shuffle buffer of each worker."""
    xflip: bool = False
    """Randomly flip images horizontally."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead."""
    max_bad_frac: float = 0.01
    """Largest tolerated fraction of skipped samples (undecodable, wrong size, truncated shard) per loader worker."""
    timeout_s: float = 300.0
    """Longest wait in seconds for the next bytes of a shard (a stalled pipe:, http or network file): then the run
    stops with an error naming the shard; 0: wait forever."""

    def validate(self) -> None:
        """Raise ConfigError for impossible values."""
        _at_least("data.num_workers", self.num_workers, 0)
        _at_least("data.shuffle_buffer", self.shuffle_buffer, 0)
        _at_least("data.prefetch_factor", self.prefetch_factor, 1, "positive")
        _within("data.max_bad_frac", self.max_bad_frac, closed=True)
        _at_least("data.timeout_s", self.timeout_s, 0)


@dataclass
class TrainConfig:
    """The schedule, the loss and the numerics of training."""

    kimg: float = 40.0
    """Budget: thousands of real images shown to D."""
    batch: int = 64
    """Global batch: real images per D step summed over all ranks (must divide by the number of ranks)."""
    d_steps: int = 1
    """D steps per G step (SNGAN's n_dis: 5, BigGAN's: 2): every iteration takes one real batch and one D step, G
    takes its step on every d_steps-th iteration of the run (so kimg still counts reals shown to D)."""
    loss: Literal["nonsaturating", "hinge", "least_squares", "wgan", "relativistic"] = "nonsaturating"
    """GAN loss (wgan wants a Lipschitz D: train.gp_weight > 0 or the spectral-norm resnet D; relativistic: each fake
    judged against a real of its class, softplus(D(fake) - D(real)), R3GAN's; G's phase then also runs D on the
    real batch, a conditional G is asked for the real batch's classes, and ADA steers by sign(D(real) - D(fake)))."""
    gp_weight: float = 0.0
    """Weight of the WGAN-GP gradient penalty on real/fake interpolates, each D step (Gulrajani et al.: 10); 0: off."""
    r1_gamma: float = 0.0
    """R1 weight gamma: gamma/2 * E||grad D(real)||^2 (StyleGAN2: 0.01-10, grows with resolution); 0: off."""
    r2_gamma: float = 0.0
    """R2 weight: R1's penalty on G's samples, gamma/2 * E||grad D(fake)||^2, in R1's lazy step (R3GAN regularises
    D with R1 and R2 at the same gamma: keeps D smooth around the fakes too); 0: off."""
    r1_interval: int = 16
    """Apply R1 (and R2) every this many steps as its own D step, scaled by the interval (lazy regularisation)."""
    lecam_weight: float = 0.0
    """Weight of the LeCam regulariser of D's outputs (0.3 in Tseng et al. with hinge loss); 0: off."""
    lecam_decay: float = 0.99
    """Decay of LeCam's running means of D(real) and D(fake) per step."""
    consistency_weight: float = 0.0
    """Weight of balanced consistency regularisation of D (bCR, Zhao et al. 2021: 10): the mean squared
    difference of D's logits on each real and fake image and on the same image flipped left-right at random and
    shifted by up to 1/8 of its side; 0: off. Only for data whose flipped and shifted images are images of the data
    (on Fashion-MNIST G learns to draw shifted, cut and mirrored objects)."""
    class_weight_d: float = 0.0
    """Class-conditional resnet D: weight of the cross-entropy of its class logits (its projection head read as a
    classifier over every class) on real images, in D's loss; 0: off."""
    class_weight_g: float = 0.0
    """Class-conditional resnet D: weight of the same cross-entropy on G's fakes and the classes G was asked for,
    in G's loss (pulls each class's samples towards what D recognises as that class); 0: off."""
    mode_seeking_weight: float = 0.0
    """Weight of the mode-seeking term in G's loss (Mao et al. 2019: 1): G's batch is drawn in pairs of the same
    class, and G is asked to keep |G(z1) - G(z2)| / |z1 - z2| large; 0: off."""
    mode_seeking: Literal["batch", "pairs"] = "batch"
    """How the mode-seeking term averages: batch (the paper's: 1 / the ratio of the batch's mean differences) or
    pairs (the mean of each pair's 1 / ratio: the most collapsed pairs are pushed apart hardest)."""
    lr_warmup_kimg: float = 0.0
    """Ramp both learning rates linearly from 0 over this many kimg."""
    lr_decay: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule over the run after the warm-up."""
    lr_final: float = 0.0
    """Learning rates at train.kimg as a fraction of G_opt.lr / D_opt.lr (linear and cosine decay)."""
    seed: int = 0
    """Seed for weights, noise and data order."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast precision; auto: bf16 on GPUs that support it, else fp32."""
    ema_kimg: float = 10.0
    """Half-life of G_ema in thousands of images (0: no averaging, G_ema = G)."""
    ema_rampup: float = 0.05
    """Limit the EMA half-life to this fraction of the images shown so far (0: no ramp-up)."""
    tick_kimg: float = 1.0
    """Interval of maintenance (stats line, progress) in kimg."""
    snapshot_kimg: float = 5.0
    """Interval of sample grids in kimg (a grid is also written at the start and the end)."""
    checkpoint_kimg: float = 20.0
    """Interval of checkpoints in kimg (one is also written at the end); 0: only at the end."""
    grid_size: int = 64
    """Number of images in the fixed-noise sample grid."""
    channels_last: bool | Literal["auto"] = "auto"
    """channels_last memory format for models and images (faster convolutions on recent GPUs); auto: on for CUDA,
    off on CPU and under DeepSpeed (ZeRO refuses channels_last weights)."""
    malloc_tuning: bool | Literal["auto"] = "auto"
    """Keep freed CPU memory in the process for reuse (glibc mallopt: mmap threshold 256 MiB, trim threshold 1 GiB)
    instead of returning it to the OS and page-faulting it back at every step; auto: on when the nets train on
    the CPU with glibc (benchmarks/step_speed.py --malloc-tuning off measures the difference)."""
    compile: bool = False
    """torch.compile G's and D's training forwards; if compiling or the first step fails: one warning, then eager."""
    compile_backend: str = "inductor"
    """torch.compile backend (inductor; eager or aot_eager only check the plumbing)."""
    max_steps: int = 0
    """Stop after this many D/G iterations regardless of kimg (0: no limit); for tests and benchmarks."""
    keep_checkpoints: int = 3
    """Complete checkpoints kept in the run folder (older ones are deleted once a newer one is complete)."""

    @property
    def lazy_regularized(self) -> bool:
        """Whether D takes the lazy R1/R2 step every r1_interval steps."""
        return self.r1_gamma > 0 or self.r2_gamma > 0

    def validate(self) -> None:
        """Raise ConfigError for impossible values."""
        _at_least("train.batch", self.batch, 1, "positive")
        _at_least("train.grid_size", self.grid_size, 1, "positive")
        for key in ("kimg", "tick_kimg", "snapshot_kimg", "r1_interval", "d_steps"):
            _positive(f"train.{key}", getattr(self, key))
        for key in (
            "ema_kimg",
            "ema_rampup",
            "checkpoint_kimg",
            "max_steps",
            "keep_checkpoints",
            "gp_weight",
            "r1_gamma",
            "r2_gamma",
            "lecam_weight",
            "consistency_weight",
            "class_weight_d",
            "class_weight_g",
            "mode_seeking_weight",
            "lr_warmup_kimg",
        ):
            _at_least(f"train.{key}", getattr(self, key), 0)
        _within("train.lecam_decay", self.lecam_decay, closed=False)
        _within("train.lr_final", self.lr_final, closed=True)
        if self.compile and not self.compile_backend:
            raise ConfigError("key 'train.compile_backend' is empty: name a torch.compile backend (inductor)")


@dataclass
class AugmentConfig:
    """Augmentation of every image D sees, real and fake alike (augment.py); empty lists: off."""

    diffaugment: list[Literal["color", "translation", "cutout"]] = field(default_factory=list)
    """DiffAugment ops applied to every image: any of color, translation, cutout."""
    ada: list[
        Literal["xflip", "rotate90", "translate", "scale", "rotate", "brightness", "contrast", "saturation", "cutout"]
    ] = field(default_factory=list)
    """Adaptive ops, each applied with probability p: xflip, rotate90, translate, scale, rotate, brightness,
    contrast, saturation, cutout."""
    p: float = 0.0
    """Initial probability of the adaptive ops."""
    target: float = 0.6
    """Target of E[sign(D(real))] that steers p; 0: keep p fixed."""
    speed_kimg: float = 100.0
    """Thousands of images in which p can move from 0 to 1."""
    interval: int = 4
    """D steps between adjustments of p."""

    def validate(self) -> None:
        """Raise ConfigError for impossible values (unknown ops are refused by their type)."""
        _positive("augment.speed_kimg", self.speed_kimg)
        _positive("augment.interval", self.interval)
        _within("augment.target", self.target, closed=False)
        _within("augment.p", self.p, closed=True)


@dataclass
class MetricsConfig:
    """Sample-quality metrics (gandist/metrics/) during training and in `gandist evaluate`."""

    interval_kimg: float = 0.0
    """Compute the metrics every this many kimg and at the end of training (all ranks share the work); 0: off."""
    feature_net: str = "inception"
    """Feature space: inception (FID protocol, local weights), a .pt2/TorchScript file, or module:factory@weights."""
    reference: str = ""
    """Shards of the reference images (e.g. a test split); empty: data.shards. Statistics are cached next to them."""
    classifier: str = ""
    """Class-conditional models: a classifier of the reference classes (a file or form as feature_net, returning
    N x K logits) for class fidelity: its accuracy on each class's samples / on real images of it; empty: off."""
    num_fake: int = 10000
    """Generated images per evaluation (50000 for the standard FID-50k)."""
    num_real: int = 0
    """Reference images embedded (the first ones in shard order); 0: all of them."""
    real_features: int = 10000
    """Reference features kept (random subset) for KID and precision/recall."""
    kid_subsets: int = 100
    """Random subsets averaged by KID."""
    kid_subset_size: int = 1000
    """Images per KID subset."""
    pr_k: int = 3
    """k of the k-nearest-neighbour manifolds of precision/recall."""
    batch: int = 128
    """Images per rank per forward of G and the feature network."""
    stats_cache: str = ""
    """Folder for cached reference statistics; empty: next to the reference shards (gandist-stats/)."""

    def validate(self) -> None:
        """Raise ConfigError for impossible values."""
        _at_least("metrics.interval_kimg", self.interval_kimg, 0)
        _at_least("metrics.num_real", self.num_real, 0)
        for key in ("real_features", "kid_subsets", "pr_k", "batch"):
            _positive(f"metrics.{key}", getattr(self, key))
        _at_least("metrics.num_fake", self.num_fake, 2)
        _at_least("metrics.kid_subset_size", self.kid_subset_size, 2)


@dataclass
class StrategyConfig:
    """How parameters are held and stepped across processes."""

    name: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    """auto: deepspeed under an accelerate DeepSpeed launch (launch/deepspeed_zero*.yaml), else ddp when several
    processes are launched, else single; deepspeed: one ZeRO engine per net under any launch."""
    timeout_s: int = 600
    """Process-group timeout in seconds: a rank that stops answering ends the job after this long."""
    zero_stage: int | None = None
    """DeepSpeed ZeRO stage: 0 data parallel, 1 + sharded optimizer states, 2 + sharded gradients, 3 + sharded
    parameters; null: the launch config's stage (ACCELERATE_DEEPSPEED_ZERO_STAGE), else strategy.deepspeed_config's,
    else 2."""
    gradient_accumulation: int | None = None
    """Micro-batches per optimizer step: each rank's share of train.batch is split into this many; null: the
    launch config's gradient_accumulation_steps, else 1."""
    grad_clip: float | None = None
    """Clip each net's gradient L2 norm (over all ranks) to this value before its step; 0: off; null: the launch
    config's gradient_clipping, else off."""
    deepspeed_config: str = ""
    """DeepSpeed JSON (e.g. launch/deepspeed/zero2.json) to build both engines from, its 'auto' values filled
    from this config; empty: the launch config's deepspeed_config_file, else generated from this config."""
    bucket_mb: float = 100.0
    """DeepSpeed's memory-sized settings, in MiB of fp32 elements, where the JSON does not give them: each engine's
    gradient bucket (reduce_bucket_size, allgather_bucket_size) and under ZeRO-3 the prefetch bucket, the most
    parameters gathered at once (stage3_max_live_parameters, stage3_max_reuse_distance) and the optimizer
    sub-group (sub_group_size). DeepSpeed's defaults are sized for large transformers (a 2 GB fp32 gradient
    bucket per engine); `gandist estimate` counts these."""

    def validate(self) -> None:
        """Raise ConfigError for impossible values (the launch environment is checked at start-up)."""
        _positive("strategy.timeout_s", self.timeout_s)
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"key 'strategy.zero_stage' must be 0, 1, 2 or 3 (or null), got {self.zero_stage}")
        for key, value in (("zero_stage", self.zero_stage), ("deepspeed_config", self.deepspeed_config or None)):
            if value is not None and self.name in ("single", "ddp"):
                raise ConfigError(
                    f"key 'strategy.{key}' = {value!r} needs strategy.name=deepspeed (or auto under a DeepSpeed "
                    f"launch), but strategy.name is {self.name!r}"
                )
        if self.gradient_accumulation is not None:
            _at_least("strategy.gradient_accumulation", self.gradient_accumulation, 1, ">= 1 (or null)")
        if self.grad_clip is not None:
            _at_least("strategy.grad_clip", self.grad_clip, 0, ">= 0 (0: off; or null)")
        _positive("strategy.bucket_mb", self.bucket_mb)


@dataclass
class FaultConfig:
    """Stopping early, surviving bad steps."""

    stop_after_minutes: float = 0.0
    """Wall-time budget of this job in minutes: then checkpoint and exit with the requeue code (0: none)."""
    stop_file: str = ""
    """A file whose existence asks the run to checkpoint and stop; empty: STOP in the run folder."""
    check_every: int = 10
    """Steps between looks at the stop file and the time budget (a signal is acted on at the next step, or at once
    while a rank waits for data)."""
    nan_guard: bool = True
    """Skip (on all ranks) any step whose loss or gradient is NaN/Inf on any rank. Costs one small all-reduce and
    one host sync per optimizer step of each net (D, G, lazy R1): the loop's only per-step device syncs; off: a step
    never waits for the GPU (the per-step stop vote is a CPU all-reduce; the tick still syncs)."""
    max_bad_steps: int = 20
    """Consecutive skipped steps that trigger a rollback to the last complete checkpoint."""
    max_rollbacks: int = 3
    """Rollbacks allowed before the run stops with an error."""
    max_skipped_frac: float = 0.5
    """A job that skipped more than this fraction of its steps as non-finite ends with an error, not 'done'."""

    def validate(self) -> None:
        """Raise ConfigError for impossible values."""
        _at_least("faults.stop_after_minutes", self.stop_after_minutes, 0)
        _at_least("faults.max_rollbacks", self.max_rollbacks, 0)
        _at_least("faults.check_every", self.check_every, 1)
        _at_least("faults.max_bad_steps", self.max_bad_steps, 1)
        _within("faults.max_skipped_frac", self.max_skipped_frac, closed=True)


@dataclass
class DebugConfig:
    """Fault injection for tests: never needed in real runs."""

    nan_at_steps: list[int] = field(default_factory=list)
    """Steps (counted from the run's start) whose D loss is made NaN."""
    nan_rank: int = -1
    """Rank that gets the NaN (-1: all ranks)."""
    fail_at_step: int = -1
    """Step at which `fail_rank` raises an exception (-1: never)."""
    fail_rank: int = 0
    """Rank that fails at `fail_at_step`."""
    checkpoint_delay_s: float = 0.0
    """Pause inside every checkpoint save, after the files and before the COMPLETE marker."""


# accelerate's trackers (accelerate.utils.LoggerType; a test keeps the two equal), and gandist's two words
TRACKERS = ("wandb", "tensorboard", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class TrackingConfig:
    """Experiment trackers, through accelerate (rank 0 only). W&B also follows the usual WANDB_* variables,
    MLflow the MLFLOW_* ones."""

    report_to: list[str] = field(default_factory=lambda: ["auto"])
    """Trackers: auto (wandb where W&B credentials exist or WANDB_MODE is set, else none), none, or any of
    accelerate's: wandb, tensorboard, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio (a list, or
    comma-separated: wandb,tensorboard)."""
    project: str = ""
    """Project: W&B project, MLflow experiment, TensorBoard sub-folder of the run folder; empty: WANDB_PROJECT or
    'gandist'."""
    entity: str = ""
    """W&B entity (team or user); empty: WANDB_ENTITY or your default."""
    name: str = ""
    """Display name of the run (W&B, MLflow); empty: the run folder name."""
    group: str = ""
    """W&B group, e.g. one sweep or one multi-run experiment."""
    tags: list[str] = field(default_factory=list)
    """W&B tags (MLflow: tags without values)."""
    notes: str = ""
    """W&B notes (MLflow: the run's description)."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online where W&B credentials exist (WANDB_API_KEY or `wandb login`), else offline (never prompts);
    WANDB_MODE wins if set."""
    log_images: bool = True
    """Send sample grids (and one grid of real images at the start) to the trackers."""

    def validate(self) -> None:
        """Raise ConfigError for unknown trackers, and auto or none among others."""
        unknown = [n for n in self.report_to if n not in (*TRACKERS, "auto", "none")]
        if unknown:
            raise ConfigError(
                f"key 'tracking.report_to' has unknown tracker(s) {unknown}: use auto, none or any of "
                f"{', '.join(TRACKERS)}"
            )
        if len(self.report_to) > 1 and {"auto", "none"} & set(self.report_to):
            raise ConfigError(
                f"key 'tracking.report_to' = {self.report_to}: auto and none stand alone; name the trackers instead"
            )


@dataclass
class Config:
    """Everything a training run needs, apart from where it runs."""

    output_dir: str = "runs"
    """Folder holding one sub-folder per run."""
    run_name: str = ""
    """Name of the run folder inside output_dir (no path separators, not '..'); empty: a timestamp."""
    resume: str = "auto"
    """auto: continue from the newest intact checkpoint of the run folder if any; never: start afresh (refused if
    the folder holds checkpoints); restart: move the folder's earlier checkpoints and stats aside to
    previous-<time>/ and start afresh; or a checkpoint path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    G_opt: OptimizerConfig = field(default_factory=OptimizerConfig)
    D_opt: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def validate(self) -> None:
        """Raise ConfigError for well-typed but impossible values: each section checks its own keys."""
        name = self.run_name
        if "/" in name or "\\" in name or name in (".", "..") or name.startswith(".") or name != name.strip():
            raise ConfigError(
                f"key 'run_name' = {name!r} must be a plain folder name inside output_dir (no '/', no leading '.', "
                "no surrounding spaces): use output_dir to choose where runs go"
            )
        for section in (
            self.model,
            self.data,
            self.train,
            self.augment,
            self.metrics,
            self.strategy,
            self.faults,
            self.tracking,
        ):
            section.validate()
        self.G_opt.validate("G_opt")
        self.D_opt.validate("D_opt")
        m = self.model
        for key in ("class_weight_d", "class_weight_g"):
            weight = getattr(self.train, key)
            if weight > 0 and (m.arch != "resnet" or m.num_classes == 0):
                raise ConfigError(
                    f"key 'train.{key}' = {weight} needs the class logits of a class-conditional resnet D: set "
                    f"model.arch=resnet and model.num_classes > 0 (got arch {m.arch!r}, num_classes {m.num_classes})"
                )


def _at_least(key: str, value: float, low: float, words: str = "") -> None:
    if not value >= low:
        raise ConfigError(f"key '{key}' must be {words or f'>= {low}'}, got {value}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"key '{key}' must be > 0, got {value}")


def _within(key: str, value: float, closed: bool) -> None:
    """value in [0, 1] (closed) or [0, 1)."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(f"key '{key}' must lie in [0, 1{']' if closed else ')'}, got {value}")


# ----------------------------------------------------------------------------------------------
# Building a config from dicts, with type checking.


def _check_value(key: str, value: Any, hint: Any, source: str) -> Any:
    """Return `value` converted to `hint`, or raise ConfigError naming key and value."""
    origin = typing.get_origin(hint)
    bad = ConfigError(f"{source}: key '{key}' expects {describe_type(hint)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{source}: key '{key}' must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, value, arg, source)
            except ConfigError:
                pass
        raise bad
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad
        return tuple(_check_value(f"{key}[{i}]", v, a, source) for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(hint)
        if isinstance(value, str) and (arg is str or typing.get_origin(arg) is Literal):  # a=x,y on the command line
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_check_value(f"{key}[{i}]", v, arg, source) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{source}: key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def describe_type(hint: Any) -> str:
    """A type hint of the config in words: float, one of 'a', 'b', int or null, list of str, [float, float]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return repr(args[0]) if len(args) == 1 else "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe_type(a) for a in args)
    if origin is list:
        return f"list of {describe_type(args[0])}"
    if origin is tuple:
        return "[" + ", ".join(describe_type(a) for a in args) + "]"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def _merge(obj: Any, updates: dict, source: str, prefix: str = "") -> None:
    """Apply a nested dict of updates to a dataclass instance in place."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = [n for n in names if n.lower() == str(key).lower() or n.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(sorted(names))})"
            raise ConfigError(f"{source}: unknown key '{full}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, source, full + ".")
        else:
            setattr(obj, key, _check_value(full, value, hints[key], source))


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=c` into ('a.b', parsed c); c is read as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.kimg=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML: {e}") from None
    if value is None and raw.strip().lower() not in ("null", "~", "none"):
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _field_hint(cfg: Config, key: str) -> Any:
    """The type hint of a dotted key, or None if there is no such field."""
    obj: Any = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        obj = getattr(obj, part, None)
        if not dataclasses.is_dataclass(obj):
            return None
    if not dataclasses.is_dataclass(obj):
        return None
    return typing.get_type_hints(type(obj)).get(parts[-1])


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build the config from defaults, an optional YAML file and dotted overrides; validate it."""
    cfg = Config()
    if path is not None:
        apply_file(cfg, path)
    apply_overrides(cfg, overrides)
    cfg.validate()
    return cfg


def apply_file(cfg: Config, path: str | Path) -> Config:
    """Apply the values of a YAML config file to a config in place (no validation); returns it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    _merge(cfg, data, f"config file {str(path)!r}")
    return cfg


def keys_given(path: str | Path | None, overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The dotted keys a YAML file and overrides set (not their values): what a user chose explicitly."""

    def flat(data: Any, prefix: str = "") -> set[str]:
        if not isinstance(data, dict):
            return {prefix.rstrip(".")}
        return {k for key, value in data.items() for k in flat(value, f"{prefix}{key}.")}

    keys = {parse_override(text)[0] for text in overrides}
    if path is not None:
        keys |= flat(yaml.safe_load(Path(path).read_text()) or {})
    return keys


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply `key.sub=value` overrides to a config in place (no validation); returns it."""
    for text in overrides:
        key, value = parse_override(text)
        if _field_hint(cfg, key) is str:  # run_name=off stays the string 'off', not YAML's False
            value = text.split("=", 1)[1]
        _merge(cfg, _nest(key, value), f"override {text!r}")
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts and lists (tuples become lists), ready for YAML or JSON."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(data: dict, source: str = "saved config") -> Config:
    """Rebuild a Config from `to_dict` output (e.g. a run folder's config.yaml)."""
    cfg = Config()
    _merge(cfg, data, source)
    cfg.validate()
    return cfg
