"""The fast path on a CUDA GPU: on by default, no host sync inside a step without the non-finite guard, and
torch.compile (inductor) either compiles or falls back to eager with one warning. Skipped without CUDA."""

import json

import pytest
import torch

from gandist.config import load_config
from gandist.models import build_nets
from gandist.objectives.losses import get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import make_strategy
from gandist.training.device import resolve_channels_last
from gandist.training.ema import make_ema, update_ema
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases
from tests.conftest import ROOT, run, train_cmd

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("guard", [False, True])
def test_a_step_syncs_with_the_host_only_for_the_guard(guard):
    cfg = load_config(ROOT / "configs/tiny.yaml", ["model.channels=3"])
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
    device = strategy.device
    fmt = torch.channels_last if resolve_channels_last("auto", device.type, strategy.name) else torch.contiguous_format
    assert fmt == torch.channels_last
    G, D = build_nets(cfg.model, cfg.train.seed)
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    G_ema = make_ema(G)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt, device.type))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt, device.type))
    assert strategy.optimizer("G").defaults["fused"] is True
    phases = Phases(strategy, *get_losses("nonsaturating"), TickStats(device), guard=guard)
    real = torch.rand(32, 3, 32, 32, device=device).contiguous(memory_format=fmt) * 2 - 1

    def step() -> None:
        phases.step(real, torch.randn(32, 16, device=device), torch.randn(32, 16, device=device))
        update_ema(G_ema, G, 0.99)

    step()  # cudnn.benchmark, allocator warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        if guard:  # the guard's documented sync: one per net per step
            with pytest.raises(RuntimeError, match="synchroniz"):
                step()
        else:
            step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    strategy.close()


def test_a_default_run_is_channels_last_and_compile_either_works_or_falls_back(tmp_path):
    args = train_cmd(f"output_dir={tmp_path}")
    proc = run([*args, "run_name=plain"], timeout=600)
    assert "channels_last" in proc.stderr and "precision bf16" in proc.stderr
    proc = run([*args, "run_name=compiled", "train.compile=true"], timeout=900)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING train.compile failed" in line]
    assert len(warnings) <= 1, warnings
    summary = json.loads((tmp_path / "compiled" / "summary.json").read_text())
    assert summary["step"] == 8
