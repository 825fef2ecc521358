"""The class loss of a conditional resnet D (its projection head read as a classifier) and its config keys."""

import math

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.models import build_models
from gandist.objectives.losses import class_loss
from tests.unit.conditional_nets import CLASSES, RES, make_phases, nets


@pytest.mark.parametrize("d_mbstd", [0, 2])
def test_class_logits_are_the_projection_terms_of_every_class(d_mbstd):
    _, D = nets(d_mbstd=d_mbstd)
    D.eval()  # spectral norm without its power-iteration update: repeated calls see the same weights
    x = torch.randn(5, 1, RES, RES)
    c = torch.tensor([0, 1, 2, 1, 0])
    logit, class_logits = D(x, c, classes=True)
    torch.testing.assert_close(logit, D(x, c))
    assert class_logits.shape == (5, CLASSES)
    base = D(x, torch.zeros(5, dtype=torch.long))
    for k in range(1, CLASSES):
        # the logit's dependence on the label is exactly the class logits' difference
        diff = D(x, torch.full((5,), k)) - base
        torch.testing.assert_close(diff[:, 0], class_logits[:, k] - class_logits[:, 0], atol=1e-5, rtol=1e-5)


def test_unconditional_D_has_no_class_logits():
    _, D = build_models("resnet", RES, 1, z_dim=8, g_width=4, d_width=4)
    with pytest.raises(ValueError, match="class-conditional"):
        D(torch.randn(2, 1, RES, RES), None, classes=True)


def test_class_loss_is_the_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3)) / 2
    assert class_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def _class_batch(n: int, generator: torch.Generator):
    """Real images whose class is their brightness: -0.8, 0 or 0.8 plus a little noise."""
    c = torch.randint(0, CLASSES, (n,), generator=generator)
    x = (c.float() * 0.8 - 0.8).view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, RES, RES, generator=generator)
    return x.clamp(-1, 1), c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_D_class_loss_makes_D_classify_real_images_faster(seed):
    # the projection term alone also separates the classes somewhat (fakes come with other labels);
    # the class loss must make D's class logits fit the reals' classes faster than that
    after = {}
    for weight in (0.0, 1.0):
        phases = make_phases(class_weight_d=weight)
        D = phases.strategy.module("D")
        g = torch.Generator().manual_seed(seed)
        x, c = _class_batch(24, g)
        z, c_fake = torch.randn(24, 8, generator=g), torch.randint(0, CLASSES, (24,), generator=g)
        for _ in range(5):
            assert phases.d_phase(x, z, c, c_fake)
        with torch.no_grad():
            after[weight] = class_loss(D(x, c, classes=True)[1], c).item()
        assert ("loss/class_D" in phases.stats.means(lambda t: t)) == (weight > 0)
    assert after[1.0] < after[0.0]


def test_G_class_loss_changes_G_step_and_is_reported():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(8, 8, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
    steps = {}
    for weight in (0.0, 1.0):
        phases = make_phases(class_weight_g=weight)
        G = phases.strategy.module("G")
        before = [p.detach().clone() for p in G.parameters()]
        assert phases.g_phase(z, c)
        steps[weight] = [p.detach() - b for p, b in zip(G.parameters(), before)]
        assert ("loss/class_G" in phases.stats.means(lambda t: t)) == (weight > 0)
    assert any(not torch.allclose(a, b) for a, b in zip(steps[0.0], steps[1.0]))


@pytest.mark.parametrize("key", ["train.class_weight_d", "train.class_weight_g"])
def test_class_weights_need_a_conditional_resnet(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*num_classes"):
        load_config(None, [f"{key}=1.0"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}=-1"])
    cfg = load_config(None, ["model.arch=resnet", "model.num_classes=10", f"{key}=0.5"])
    assert getattr(cfg.train, key.split(".")[1]) == 0.5


def test_class_losses_with_gradient_accumulation_report_every_micro_batch():
    phases = make_phases(class_weight_d=1.0, class_weight_g=1.0, accumulation=2)
    g = torch.Generator().manual_seed(0)
    x, c = _class_batch(8, g)
    z, c_fake = torch.randn(8, 8, generator=g), torch.randint(0, CLASSES, (8,), generator=g)
    assert phases.step(x, z, z, c, c_fake, c_fake)
    keys = ("loss/class_D", "loss/class_G", "class_acc/real", "class_acc/fake")
    assert {key: phases.stats.counts.get(key) for key in keys} == dict.fromkeys(keys, 2)
    stats = phases.stats.means(lambda t: t)
    assert all(math.isfinite(stats[key]) for key in keys)
    assert 0 <= stats["class_acc/real"] <= 1 and 0 <= stats["class_acc/fake"] <= 1
