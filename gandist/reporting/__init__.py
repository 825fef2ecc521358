"""What a run reports, and where.

stats.py      per-tick statistics accumulated on the device, reduced across ranks
progress.py   stats.jsonl, training progress (a bar, or a line per tick), messages, progress of finite jobs
trackers.py   experiment trackers through accelerate (W&B, TensorBoard, MLflow, ...; rank 0)
grids.py      image grids as PNG
"""
