"""The fast path, resolved for the device the nets train on.

    train.channels_last=auto     channels_last weights and images on CUDA; off on CPU and under DeepSpeed
                                 (ZeRO flattens parameters and refuses channels_last weights)
    G_opt.fused / D_opt.fused=auto   torch's fused Adam on CUDA; torch's default (foreach) elsewhere
    train.malloc_tuning=auto     on CPU (glibc): freed tensor memory stays in the process for the next step
    train.compile=false          torch.compile of G's and D's training forwards (strategy.compile), opt-in:
                                 if compiling or the first compiled step raises, one warning line, then eager
                                 (step.first_step_or_eager)

set_up_device applies the process-wide ones (and cudnn.benchmark and TF32 on CUDA) for the loop and the
benchmarks alike; benchmarks/step_speed.py measures each switch (docs/design.md has the GPU figures).
"""

from __future__ import annotations

import ctypes

import torch

from gandist.config import ConfigError, TrainConfig

# glibc's mallopt parameters (malloc.h) and the values train.malloc_tuning sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 1 << 30


def resolve_channels_last(setting: bool | str, device_type: str, strategy_name: str) -> bool:
    """train.channels_last ('auto', True or False) for nets on `device_type` under strategy `strategy_name`."""
    if strategy_name == "deepspeed":
        if setting is True:
            raise ConfigError(
                "key 'train.channels_last' = true does not work with strategy deepspeed: ZeRO flattens the "
                "parameters and refuses channels_last weights ('self.stride(-1) must be 1 to view Float as Byte'); "
                "use train.channels_last=auto or false"
            )
        return False
    if setting == "auto":
        return device_type == "cuda"
    return bool(setting)


def resolve_fused(setting: bool | str, device_type: str) -> bool:
    """G_opt.fused / D_opt.fused ('auto', True or False) for parameters living on `device_type`."""
    if setting == "auto":
        return device_type == "cuda"
    return bool(setting)


def tune_malloc(setting: bool | str, device_type: str) -> bool:
    """train.malloc_tuning ('auto', True or False) for nets on `device_type`; True if glibc's malloc was tuned.

    By default glibc serves a large block from a fresh mmap or trims the freed top of its heap back to the OS,
    so every training step on the CPU page-faults its activations in again (about 10k faults per step for the
    DCGAN at 32 px, batch 64). Fixed thresholds stop that: freed memory is reused by the next step, and the
    process's peak stays what the step needs. The setting is process-wide and forked loader workers inherit it.
    """
    if setting is False or (setting == "auto" and device_type != "cpu"):
        return False
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this process runs on
    except (OSError, TypeError):  # no C library to open this way (Windows)
        mallopt = None
    done = bool(mallopt) and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if not done and setting is True:
        raise ConfigError("key 'train.malloc_tuning' = true needs glibc's mallopt, not in this C library: use auto")
    return bool(done)


def set_up_device(t: TrainConfig, device_type: str, strategy_name: str) -> bool:
    """The process-wide fast-path settings for nets training on `device_type`: cudnn.benchmark and TF32 on
    CUDA, the malloc tuning on the CPU. Returns whether the nets and images go channels_last."""
    if device_type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tune_malloc(t.malloc_tuning, device_type)
    return resolve_channels_last(t.channels_last, device_type, strategy_name)
