"""The training loop and what a run holds.

loop.py        train(): set-up, steps, maintenance, finish (its docstring is the loop in pseudocode)
run.py         set_up(): the Run object (nets, state, data, reporting) and the maintenance cadences
step.py        one iteration: batch, noise, phases, augmentation probability, G_ema, counters
phases.py      the D, G and R1 phases, each one optimizer step over its micro-batches
tick.py        maintenance between steps: stop vote, metrics, tick record, grids, checkpoints
state.py       what a checkpoint holds (TrainState, Progress)
checkpoint.py  atomic all-rank checkpoint folders; the one finder and loader
stopping.py    stop requests (signals, stop file, time budget) and the requeue marker
guard.py       rollback after persistent non-finite steps
ema.py         G_ema
schedule.py    learning-rate schedules in kimg
optim.py       each net's Adam
device.py      device settings of the fast path (channels_last, fused Adam, TF32, malloc tuning)
debug.py       fault injection for tests
"""
