"""Using a trained generator.

load.py       find a run's checkpoint and load G_ema (or G) for inference
sample.py     reproducible noise and labels, images, grids, latent walks
generate.py   `gandist generate`: N images as shards, split across the ranks of a launch
export.py     `gandist export` (safetensors + JSON, or torch.export) and load_generator
"""
