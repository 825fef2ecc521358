"""DeepSpeed ZeRO 0-3 for G and D on 2 real CPU processes (gloo), against DDP on the same batches.

One launch of zero_steps.py runs every one-step case (its docstring lists them); the tests below read
its results. Two whole `gandist train` runs check the two ways of selecting DeepSpeed.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from gandist.config import load_config
from gandist.models import build_nets
from gandist.training.checkpoint import net_state
from tests.conftest import BIN, ROOT, accelerate_cmd, free_port, run

pytestmark = pytest.mark.slow

CASES = [(stage, precision) for stage in (1, 2, 3) for precision in ("fp32", "bf16")]
SHARD_ALL = ROOT / "tests/dist/zero3_shard_all.json"


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("zero") / "steps.pt"
    run(accelerate_cmd(ROOT / "tests/dist/zero_steps.py", str(out)), timeout=400)
    return torch.load(out, weights_only=False)


def close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(
        a.float(), b.float(), rtol=rtol, atol=rtol * b.float().abs().max().item() + 1e-12, msg=what
    )


def assert_same_step(case: dict, ref: dict, what: str, rtol: float = 1e-5) -> None:
    """Same losses, Adam moments (gradients), weights and G_ema as the reference case."""
    for key, value in ref["losses"].items():
        assert case["losses"][key] == pytest.approx(value, rel=rtol, abs=1e-7), f"{what}: {key}"
    for net in ("G", "D"):
        for i, (a, b) in enumerate(zip(case[f"exp_avg_{net}"], ref[f"exp_avg_{net}"])):
            close(a, b, f"{what}: exp_avg of {net} parameter {i}", rtol)
        for k, v in ref[net].items():
            close(case[net][k], v, f"{what}: {net}.{k}", rtol)
    for k, v in ref["G_ema"].items():
        close(case["G_ema"][k], v, f"{what}: G_ema.{k}", rtol)


@pytest.mark.parametrize("stage,precision", CASES)
def test_zero_step_trains_both_nets_and_keeps_ranks_identical(steps, stage, precision):
    case = steps[(stage, precision)]
    assert steps["world"] == 2 and case["kind"] == "ZeroStrategy"
    assert all(math.isfinite(v) for v in case["losses"].values())
    G0, D0 = build_nets(load_config(None, ["model.g_width=8", "model.d_width=8", "model.z_dim=16"]).model, 0)
    for name, net in (("G", G0), ("D", D0)):
        params = dict(net.named_parameters())
        assert all(case[name][k].shape == p.shape for k, p in params.items()), f"{name} not gathered to full size"
        assert all(not torch.equal(case[name][k], p.detach()) for k, p in params.items()), f"{name} did not move"
        assert len(case[f"digests_{name}"]) == 2 and len(set(case[f"digests_{name}"])) == 1, f"ranks differ in {name}"
    # ZeRO-3 really held shards (not whole parameters kept by the persistence threshold); 1 and 2 do not shard them
    assert case["G_sharded"] == (1.0 if stage == 3 else 0.0)


@pytest.mark.parametrize("stage,precision", CASES + [(0, "fp32")])
def test_zero_step_equals_ddp_step_at_same_global_batch(steps, stage, precision):
    assert_same_step(steps[(stage, precision)], steps[(None, precision)], f"ZeRO-{stage} {precision} vs DDP")


def test_optimizer_built_by_deepspeed_from_json_equals_ddp(steps):
    assert_same_step(steps[("ds_adam", 2)], steps[(None, "fp32")], "ZeRO-2 with DeepSpeed's Adam vs DDP")


def test_bf16_autocast_is_really_on(steps):
    fp32, bf16 = steps[(2, "fp32")]["losses"]["loss/D"], steps[(2, "bf16")]["losses"]["loss/D"]
    assert fp32 != bf16 and bf16 == pytest.approx(fp32, rel=1e-2)


@pytest.mark.parametrize("stage", [2, 3])
def test_clipping_equals_ddp_clipping(steps, stage):
    clipped, ddp = steps[("clip", stage)], steps[("clip", None)]
    assert_same_step(clipped, ddp, f"ZeRO-{stage} clipped vs DDP clipped")
    # the clip was active: Adam's first moment is (1 - beta1) = 0.5 x the clipped gradient, of norm 0.01
    norm = torch.cat([t.flatten() for t in clipped["exp_avg_D"]]).norm().item()
    assert norm == pytest.approx(0.5 * 0.01, rel=1e-3)
    assert torch.cat([t.flatten() for t in steps[(None, "fp32")]["exp_avg_D"]]).norm().item() > 10 * norm


@pytest.mark.parametrize("stage", [None, 0, 1, 3])
def test_nonfinite_guard_skips_the_step_on_every_rank(steps, stage):
    case = steps[("guard", stage)]
    assert case["nonfinite"] == [1.0, 0.0]  # reported on both ranks (rank 0 saved it; its own loss was finite)
    assert case["unchanged"] and case["moved"] and len(set(case["digests"])) == 1


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_fp16_loss_scale_skips_and_recovers_like_ddp(steps, stage):
    """Each engine's dynamic loss scale starts at 2**16, skips the overflowing steps, backs off, then trains."""
    case, ddp = steps[("fp16_cpu", stage)], steps[("fp16_cpu", None)]
    for net in ("G", "D"):
        assert case[f"skipped/{net}"] == ddp[f"skipped/{net}"], net
    assert sum(case["skipped/D"]) >= 1 and case["skipped/D"][-1] == 0, case["skipped/D"]  # skipped, then recovered
    assert case["scale"] == ddp["scale"] and all(s < 2.0**16 for s in case["scale"])
    for net in ("G", "D"):
        assert len(set(case[f"digests_{net}"])) == 1
        for k, v in ddp[net].items():
            close(case[net][k], v, f"fp16 ZeRO-{stage} vs DDP: {net}.{k}")


@pytest.mark.parametrize("stage", [None, 2])
def test_gradient_accumulation_equals_twice_the_micro_batch(steps, stage):
    one, two = steps[("accumulation", stage, 1)], steps[("accumulation", stage, 2)]
    assert_same_step(two, one, f"{'DDP' if stage is None else f'ZeRO-{stage}'}: 2 x 4 vs 1 x 8", rtol=1e-4)


@pytest.mark.parametrize("stage", [3, 1])
def test_zero_checkpoint_resumes_bit_identically(steps, stage):
    r = steps[("resume", stage)]
    for net in ("G", "D", "G_ema"):
        for k, v in r["uninterrupted"][net].items():
            assert torch.equal(r["resumed"][net][k], v), f"{net}.{k}"
    for net in ("G", "D"):
        assert all(
            torch.equal(a, b) for a, b in zip(r["resumed"][f"exp_avg_{net}"], r["uninterrupted"][f"exp_avg_{net}"])
        )
    assert r["resumed"]["losses"] == r["uninterrupted"]["losses"]
    # state.pt keeps full G and D for sampling/export (ZeRO-1); under ZeRO-3 each rank writes its partitions
    # instead (nothing gathered) and state.pt names them; both ranks' engine shards sit beside it
    if stage == 3:
        assert "partitioned" in r["shared_keys"] and "G" not in r["shared_keys"]
        assert {"nets-rank-00000.pt", "nets-rank-00001.pt"} <= set(r["files"])
    else:
        assert {"G", "D", "strategy"} <= set(r["shared_keys"])
    for net in ("G", "D"):
        assert (
            sum(f.startswith(f"ds_{net}/state/zero_pp_rank_") and f.endswith("optim_states.pt") for f in r["files"])
            == 2
        )


def _launch(config_file: str) -> list[str]:
    """`accelerate launch` of 2 processes with a config from launch/ (script and arguments follow)."""
    cfg = str(ROOT / config_file)
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        cfg,
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]


def _train(tmp_path: Path, name: str, config_file: str, *overrides: str) -> tuple[Path, str]:
    args = ["--config", "configs/tiny.yaml", f"output_dir={tmp_path}", f"run_name={name}", "data.num_workers=0"]
    proc = run(
        [*_launch(config_file), str(ROOT / "gandist/train.py"), *args, "train.max_steps=2", *overrides], timeout=300
    )
    return tmp_path / name, proc.stdout + proc.stderr


def test_accelerate_deepspeed_launch_and_gandist_config_give_the_same_run(tmp_path):
    """launch/deepspeed_zero3.yaml against launch/cpu_2proc.yaml + strategy.name=deepspeed strategy.zero_stage=3."""
    shard_all = f"strategy.deepspeed_config={SHARD_ALL}"
    own = _train(
        tmp_path, "own", "launch/cpu_2proc.yaml", "strategy.name=deepspeed", "strategy.zero_stage=3", shard_all
    )
    acc = _train(tmp_path, "acc", "launch/deepspeed_zero3.yaml", shard_all)
    states = []
    for (run_dir, output), source in ((own, "gandist config"), (acc, "accelerate DeepSpeed launch")):
        assert f"deepspeed ZeRO-3 (from the {source})" in output
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["params_in_sync"] is True
        ckpt = Path(summary["checkpoint"])
        assert (ckpt / "ds_G" / "state").is_dir() and (ckpt / "ds_D" / "state").is_dir()
        state = torch.load(ckpt / "state.pt", weights_only=False)
        assert state["strategy"] == {"name": "deepspeed", "zero_stage": 3, "world_size": 2}
        stats = [json.loads(x) for x in (run_dir / "stats.jsonl").read_text().splitlines()]
        assert stats and all(math.isfinite(s["loss/D"]) and math.isfinite(s["loss/G"]) for s in stats)
        states.append((state, ckpt))
    (a, a_dir), (b, b_dir) = states
    for net in ("G", "D", "G_ema"):  # ZeRO-3: assembled from the ranks' partition files
        a_net, b_net = net_state(a_dir, a, net), net_state(b_dir, b, net)
        assert a_net.keys() == b_net.keys()
        for k in a_net:
            assert torch.equal(a_net[k], b_net[k]), f"{net}.{k}"
