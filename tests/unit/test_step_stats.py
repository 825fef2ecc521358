"""What an optimizer step reports for the dashboards: gradient norms and fp16 skipped steps; explicit steps."""

import math

import pytest
import torch

from gandist.config import StrategyConfig
from gandist.reporting.trackers import dashboard_key
from gandist.strategy import Strategy, make_accelerator


@pytest.fixture(scope="module")
def strategy():
    return Strategy(make_accelerator(StrategyConfig()), "fp32")


def _net(strategy, name, scaler=None):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    strategy.add(name, net, torch.optim.SGD(net.parameters(), lr=0.1))
    if scaler is not None:
        strategy.nets[name].scaler = scaler
    return net


def test_grad_norm_is_the_norm_of_the_gradient(strategy):
    net = _net(strategy, "a")
    x = torch.tensor([[1.0, 2.0, 2.0]])
    strategy.backward("a", net(x).sum())
    out = strategy.step("a")
    assert out["grad_norm"].item() == pytest.approx(3.0)  # d(w.x)/dw = x, |x| = 3
    assert "skipped" not in out


def test_fp16_scaler_reports_skipped_steps_and_unscaled_norms(strategy):
    # fp16 autocast needs CUDA, but the scaler logic is device-independent: exercise it on CPU
    net = _net(strategy, "b", torch.amp.GradScaler("cpu", init_scale=2.0**10))
    before = net.weight.detach().clone()
    strategy.backward("b", net(torch.ones(1, 3)).sum() * math.inf)
    out = strategy.step("b")
    assert out["skipped"].item() == 1.0 and torch.equal(net.weight, before)
    assert strategy.scaler("b").get_scale() == 2.0**9
    strategy.backward("b", net(torch.tensor([[1.0, 2.0, 2.0]])).sum())
    out = strategy.step("b")
    assert out["skipped"].item() == 0.0 and not torch.equal(net.weight, before)
    assert out["grad_norm"].item() == pytest.approx(3.0)  # unscaled before measuring


def test_an_optimizer_step_takes_exactly_its_micro_batches():
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32", accumulation=2)
    net = _net(strategy, "c")
    before = net.weight.detach().clone()
    strategy.backward("c", net(torch.ones(1, 3)).sum())
    with pytest.raises(RuntimeError, match="needs 2 micro-batches"):
        strategy.step("c")  # one micro-batch short
    strategy.backward("c", net(torch.ones(1, 3)).sum())
    with pytest.raises(RuntimeError, match="more than 2 micro-batches"):
        strategy.backward("c", net(torch.ones(1, 3)).sum())
    strategy.step("c")
    # two micro-batches of loss w.x with x = 1: the mean gradient is 1 per weight, one SGD step of lr 0.1
    assert torch.allclose(net.weight, before - 0.1)


def test_dashboard_keys():
    assert dashboard_key("kimg") == "progress/kimg"
    assert dashboard_key("images_per_s") == "perf/images_per_s"
    assert dashboard_key("loss/D") == "loss/D"
    assert dashboard_key("other") == "misc/other"
