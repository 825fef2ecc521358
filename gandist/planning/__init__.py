"""The memory planner: what a run needs per rank, measured and counted without building it for real.

    activations.py   activation memory of the D, G (and R1) phases per micro-batch, run on fake tensors
    accounting.py    model states per rank for one process, DDP and ZeRO-1/2/3 (the ZeRO paper's accounting)
    plan.py          counts, the estimate per strategy, and the smallest setting that fits a memory budget

`gandist estimate` (cli/estimate.py) prints it; benchmarks/memory.py measures runs beside it.
"""
