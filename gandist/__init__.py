"""gandist: a distributed, multi-node GAN trainer (Accelerate, WebDataset, DDP / DeepSpeed ZeRO)."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import gandist` stays light (no torch) until the loader is used.
    if name == "load_generator":
        from gandist.generator.export import load_generator

        return load_generator
    raise AttributeError(f"module 'gandist' has no attribute {name!r}")
