"""The memory planner: the accounting against hand-computed cases, counts, activations, the recommendation, the CLI."""

from __future__ import annotations

import json

import pytest

from gandist.cli import main
from gandist.config import ConfigError, load_config
from gandist.models import build_nets
from gandist.planning.accounting import NetSizes, Setting, ZeroBuffers, model_states, optimizer_step, set_up
from gandist.planning.activations import PhaseMemory, _measure_once, measure_phases
from gandist.planning.plan import count_nets, estimate, parse_bytes, recommend
from tests.conftest import ROOT

# G 1000 and D 3000 parameters on 4 ranks: Psi = 4000, Psi / N = 1000; buckets of 100 elements
NETS = {"G": NetSizes(1000, largest=500), "D": NetSizes(3000, largest=2000)}
ZERO = ZeroBuffers(
    reduce_bucket=100, prefetch_bucket=100, max_live=100, sub_group=10**9, persistence_threshold=0, overlap_comm=None
)


def states(strategy: str, zero: ZeroBuffers | None = None) -> dict[str, float]:
    z = zero or ZeroBuffers(**{**ZERO.__dict__, "overlap_comm": strategy == "zero3"})
    return model_states(NETS, Setting(strategy, 4, 8), z)


def test_model_states_follow_the_zero_paper_at_fp32():
    # fp32 weights (4 B) and gradients (4 B), Adam's m and v (8 B); Psi = 4000, N = 4, G_ema 4 x 1000
    expected = {
        #          weights  gradients  optimizer  master   G_ema   buckets (per engine, x2 with overlap_comm)
        "ddp": (16000, 16000, 32000, 0, 4000, 0),
        "zero1": (16000, 0, 8000, 4000, 4000, 800),  # gradients exist from backward to step only
        "zero2": (16000, 4000, 8000, 4000, 4000, 800),
        "zero3": (4000, 4000, 8000, 0, 1000, 1600),  # DeepSpeed reuses the fp32 partition: no master copy
    }
    keys = ("weights", "gradients", "optimizer", "master", "G_ema", "engine_buckets")
    for strategy, values in expected.items():
        got = states(strategy)
        assert tuple(got[k] for k in keys) == values, strategy
    # the paper's totals, fp32 edition: DDP 16 Psi, ZeRO-1 8 Psi + 12 Psi / N, ZeRO-2 4 Psi + 16 Psi / N,
    # ZeRO-3 16 Psi / N (G_ema and buckets aside)
    total = {s: sum(v for k, v in states(s).items() if k in keys[:4]) for s in expected}
    total["zero1"] += 16000  # its full gradients, counted with the phases (transient_gradients)
    assert total == {"ddp": 64000, "zero1": 32000 + 12000, "zero2": 16000 + 16000, "zero3": 16000}


def test_zero3_keeps_small_parameters_whole():
    nets = {"G": NetSizes(1000, persistent=200), "D": NetSizes(3000, persistent=0)}
    got = model_states(nets, Setting("zero3", 4, 8), ZERO)
    assert got["weights"] == 4 * (1000 + 200 * 3 / 4)  # partitions of all + whole copies of the small ones


def test_optimizer_step_and_set_up_transients():
    G = NETS["D"]  # 3000 parameters
    assert optimizer_step(G, Setting("ddp", 4, 8), None) == 4 * 3000  # Adam's sqrt(v)
    assert optimizer_step(G, Setting("single", 1, 8), None) == 4 * 3000 + 4 * 3000  # + the gradients
    assert optimizer_step(G, Setting("zero2", 4, 8), ZERO) == 2 * 4 * 750  # flat gradient partition + Adam's
    small = ZeroBuffers(**{**ZERO.__dict__, "sub_group": 100})
    assert optimizer_step(G, Setting("zero3", 4, 8), small) == 2 * 4 * 100  # per sub-group
    assert set_up(NETS, Setting("zero1", 4, 8), ZERO) == 16000 + 4 * 3000 + 4 * 3000 / 4  # flat copy of D
    assert set_up(NETS, Setting("zero3", 4, 8), small) == 16000 + 4 * 400 + 4000  # sub-group gradient buffer


def test_counts_without_allocating_match_the_built_nets():
    cfg = load_config(None, ["model.arch=stylegan2", "model.g_width=8", "model.d_width=8"])
    counted = count_nets(cfg, persistence_threshold=1000)
    G, D = build_nets(cfg.model, 0)
    for name, net in (("G", G), ("D", D)):
        sizes = [p.numel() for p in net.parameters()]
        assert counted[name].params == sum(sizes)
        assert counted[name].persistent == sum(s for s in sizes if s <= 1000)
        assert counted[name].largest == max(sizes)


@pytest.mark.parametrize(
    "config, g, d",
    [
        ("configs/stylegan2_256.yaml", 24_800_000, 24_000_000),
        ("configs/stylegan2_1024.yaml", 30_370_060, 29_012_513),
    ],
)
def test_shipped_large_configs(config, g, d):
    counted = count_nets(load_config(ROOT / config))
    assert counted["G"].params == pytest.approx(g, rel=0.01) and counted["D"].params == pytest.approx(d, rel=0.01)


def test_wide_config_has_a_billion_parameters():
    counted = count_nets(load_config(ROOT / "configs/stylegan2_wide_512.yaml"))  # on the meta device: no memory
    assert counted["G"].params + counted["D"].params >= 1_000_000_000


def test_activation_line_bounds_direct_measurements_within_its_range():
    cfg = load_config(None, ["model.arch=stylegan2", "model.g_width=8", "model.d_width=8", "train.r1_gamma=1"])
    line = measure_phases(cfg, "fp32", largest=32)
    direct = _measure_once(cfg, "fp32", 12, None)
    for phase, measured in direct.items():
        assert measured <= line[phase].at(12) <= 1.1 * measured, phase  # the chord lies just above


def test_checkpointing_and_bf16_need_less_activation_memory():
    cfg = load_config(None, ["model.arch=stylegan2", "model.g_width=8", "model.d_width=8"])
    fp32 = measure_phases(cfg, "fp32", largest=16)
    bf16 = measure_phases(cfg, "bf16", largest=16)
    ckpt = measure_phases(cfg, "fp32", largest=16, checkpointing=True)
    assert bf16["G"].at(16) < 0.8 * fp32["G"].at(16)
    assert ckpt["G"].at(16) < 0.6 * fp32["G"].at(16) and ckpt["D"].at(16) < fp32["D"].at(16)


def test_recommendation_is_the_least_sharded_setting_that_fits():
    nets = {"G": NetSizes(10**9, largest=10**7), "D": NetSizes(10**9, largest=10**7)}
    acts = {False: {"D": PhaseMemory(0, 2**28), "G": PhaseMemory(0, 2**28)}}  # 256 MiB per image
    z = ZeroBuffers(2**24, 2**24, 2**24, 2**24, 10**5, None)

    def peak(strategy: str, micro: int, acts=acts[False]) -> float:
        return estimate(nets, acts, Setting(strategy, 8, micro), z).peak

    choice, _ = recommend(nets, acts, 8, 4, z, peak("zero2", 4) + 1)
    assert (choice.setting.strategy, choice.setting.micro_batch) == ("zero2", 4)
    # ZeRO-3's peak is its set-up here (both nets built whole on every rank), whatever the micro-batch
    choice, _ = recommend(nets, acts, 8, 4, z, peak("zero3", 4) + 1)
    assert (choice.setting.strategy, choice.setting.micro_batch) == ("zero3", 4)
    assert peak("zero3", 4) == estimate(nets, acts[False], Setting("zero3", 8, 4), z).setup
    choice, tried = recommend(nets, acts, 8, 4, z, peak("zero3", 1) - 1)
    assert choice is None and [e.setting.strategy for e in tried] == ["ddp", "zero1", "zero2", "zero3"]
    # nothing fits at 64 GiB of activations per image; with activation checkpointing's 64 MiB it does
    big = {False: {"D": PhaseMemory(0, 2**36), "G": PhaseMemory(0, 2**36)}}
    small = {"D": PhaseMemory(0, 2**26), "G": PhaseMemory(0, 2**26)}
    budget = peak("zero3", 4, small) + 1
    assert recommend(nets, big, 8, 4, z, budget)[0] is None
    choice, _ = recommend(nets, {**big, True: small}, 8, 4, z, budget)
    assert choice.checkpointing and choice.peak <= budget


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("80GB") == 80e9 and parse_bytes("512MiB") == 2**29
    assert parse_bytes("24G") == 24 * 2**30
    for bad in ("80 parsecs", "-1GiB", "GiB"):
        with pytest.raises(ConfigError, match="memory size"):
            parse_bytes(bad)


def test_estimate_command(capsys):
    tiny = str(ROOT / "configs/tiny.yaml")
    assert main(["estimate", "--config", tiny, "--world-size", "2", "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    G, D = build_nets(load_config(tiny).model, 0)
    assert report["params"] == {"G": sum(p.numel() for p in G.parameters()), "D": 10976, "G_ema": 18672}
    assert set(report["strategies"]) == {"ddp", "zero1", "zero2", "zero3"} and report["precision"] == "fp32"
    zero3, ddp = report["strategies"]["zero3"], report["strategies"]["ddp"]
    assert zero3["states"]["optimizer"] == ddp["states"]["optimizer"] / 2 > 0
    assert main(["estimate", "--config", tiny, "--world-size", "2", "--device-mem", "1KiB", "--device", "cpu"]) == 0
    assert "does not fit 1.00 KiB per rank: the smallest peak is" in capsys.readouterr().out
    assert main(["estimate", "--config", tiny, "--world-size", "3"]) == 2  # 32 images do not split over 3 ranks
    assert "train.batch" in capsys.readouterr().err
