"""Config of the quality features: defaults, overrides, errors naming the key."""

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.data.stream import DataError
from gandist.training.optim import lazy_regularization_opt
from gandist.training.step import class_labels


def test_defaults_change_nothing_for_the_seed_recipe():
    cfg = load_config(None, [])
    assert cfg.model.arch == "dcgan" and cfg.model.num_classes == 0 and cfg.train.loss == "nonsaturating"
    assert cfg.train.r1_gamma == 0 and cfg.train.lecam_weight == 0 and cfg.train.gp_weight == 0
    assert cfg.augment.diffaugment == [] and cfg.augment.ada == [] and cfg.metrics.interval_kimg == 0


def test_overrides_of_lists_and_sections():
    cfg = load_config(
        None, ["augment.diffaugment=color,cutout", "model.arch=stylegan2", "model.num_classes=10", "train.loss=wgan"]
    )
    assert cfg.augment.diffaugment == ["color", "cutout"] and cfg.model.num_classes == 10


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.num_classes=10", "model.num_classes"),  # with the default dcgan
        ("augment.ada=xflip,spin", "augment.ada"),
        ("augment.diffaugment=colour", "augment.diffaugment"),
        ("train.r1_interval=0", "train.r1_interval"),
        ("train.d_steps=0", "train.d_steps"),
        ("train.lecam_decay=1.0", "train.lecam_decay"),
        ("train.lr_decay=step", "train.lr_decay"),
        ("train.loss=wasserstein", "train.loss"),
        ("metrics.num_fake=1", "metrics.num_fake"),
        ("augment.p=1.5", "augment.p"),
        ("model.arch=biggan", "model.arch"),
        ("model.d_mbstd=4", "model.d_mbstd"),  # with the default dcgan
        ("model.d_mbstd=-1", "model.d_mbstd"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_class_labels_must_fit_the_model():
    assert torch.equal(class_labels(torch.tensor([0, 9]), 10, "x.tar"), torch.tensor([0, 9]))
    with pytest.raises(DataError, match="without a cls label"):
        class_labels(torch.tensor([0, -1]), 10, "x.tar")
    with pytest.raises(DataError, match="label 12.*model.num_classes=0"):
        class_labels(torch.tensor([12]), 10, "x.tar")


def test_lazy_regularization_scales_adam():
    opt = load_config(None, []).D_opt
    lazy = lazy_regularization_opt(opt, 16)
    assert lazy.lr == pytest.approx(opt.lr * 16 / 17) and lazy.betas[1] == pytest.approx(0.999 ** (16 / 17))
