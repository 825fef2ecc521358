"""What a run reports, and where.

stats.py      per-tick statistics accumulated on the device, reduced across ranks
progress.py   stats.jsonl, the progress bar and messages (rank 0)
trackers.py   Weights & Biases and TensorBoard (rank 0)
grids.py      image grids as PNG
"""
