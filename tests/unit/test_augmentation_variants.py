"""benchmarks/augmentation.py's low-data GAN variants: each one is a valid gandist config on the default recipe."""

import importlib.util
import sys

import pytest

from gandist.config import load_config
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("augmentation", ROOT / "benchmarks" / "augmentation.py")
bench = importlib.util.module_from_spec(spec)
sys.modules.setdefault("augmentation", bench)  # its dataclasses look their module up there
spec.loader.exec_module(bench)


@pytest.mark.parametrize("variant", sorted(bench.LOW_DATA))
def test_each_low_data_variant_loads_on_the_default_recipe(variant):
    cfg = load_config(ROOT / "configs" / "fashion_mnist_best.yaml", bench.LOW_DATA[variant])
    assert cfg.model.num_classes == bench.NUM_CLASSES  # the low-data GANs are class-conditional
    if variant.endswith("-class"):
        assert cfg.train.class_weight_d > 0 and cfg.train.class_weight_g > 0
        assert cfg.augment.diffaugment
