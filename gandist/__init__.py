"""gandist: a distributed, multi-node GAN trainer (Accelerate, WebDataset, DDP / DeepSpeed ZeRO)."""

__version__ = "0.1.0"
