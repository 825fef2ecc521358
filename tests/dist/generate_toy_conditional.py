"""`generate` of a class-conditional toy G on every rank of a launch (the model zoo has no conditional G yet).

accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/generate_toy_conditional.py OUT_DIR NUM
"""

import sys
from pathlib import Path

from gandist.config import StrategyConfig
from gandist.generator.generate import GenerateSpec, generate
from gandist.strategy import Strategy, make_accelerator
from tests.generator_fixtures import toy_conditional

strategy = Strategy(make_accelerator(StrategyConfig()), "fp32")
spec = GenerateSpec(num=int(sys.argv[2]), out_dir=Path(sys.argv[1]), name="toy", shard_size=4, batch=3, balanced=True)
try:
    generate(toy_conditional(3), spec, strategy)
    print(f"rank {strategy.rank} of {strategy.world_size} wrote its shards", flush=True)
finally:
    strategy.close()
