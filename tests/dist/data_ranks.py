"""What each rank of a real multi-process launch reads; run by tests/dist/test_data.py.

    accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/data_ranks.py OUT_DIR SHARD_SPEC

Each rank writes OUT_DIR/rank<r>.json: the labels (unique sample ids) of its finite pass (2 loader
workers) and of the first batches of its endless stream (2 loader workers).
"""

import json
import sys
from pathlib import Path

from gandist.config import StrategyConfig
from gandist.data.specs import expand_shards
from gandist.data.stream import StreamSpec, make_loader
from gandist.strategy import Strategy, make_accelerator

ENDLESS_BATCHES = 6

out_dir, spec = Path(sys.argv[1]), sys.argv[2]
strategy = Strategy(make_accelerator(StrategyConfig(timeout_s=60)), "fp32")
rank, world = strategy.rank, strategy.world_size
base = dict(urls=expand_shards(spec), batch_per_gpu=4, resolution=32, channels=1, seed=7, rank=rank, world_size=world)
finite = make_loader(StreamSpec(**base, shuffle_buffer=8, finite=True, source=spec), num_workers=2, prefetch_factor=2)
finite_ids = [label for _, labels in finite for label in labels.tolist()]
endless = iter(make_loader(StreamSpec(**base, shuffle_buffer=8, source=spec), num_workers=2, prefetch_factor=2))
endless_ids = [next(endless)[1].tolist() for _ in range(ENDLESS_BATCHES)]
(out_dir / f"rank{rank}.json").write_text(json.dumps({"world": world, "finite": finite_ids, "endless": endless_ids}))
strategy.barrier()
strategy.close()
