"""G_ema under ZeRO-3 is G_ema under DDP, held as partitions: no rank keeps a full copy of G (2 CPU processes)."""

import pytest
import torch

from tests.conftest import ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ema") / "ema"
    run(accelerate_cmd(ROOT / "tests/dist/zero3_ema.py", str(out)), timeout=300)
    return {kind: torch.load(f"{out}.{kind}", weights_only=False) for kind in ("ddp", "zero3", "zero3_default")}


@pytest.mark.parametrize("kind", ["zero3", "zero3_default"])
def test_sharded_G_ema_equals_ddp_G_ema(cases, kind):
    ddp, zero = cases["ddp"], cases[kind]
    assert ddp["G_ema"].keys() == zero["G_ema"].keys()
    for k, v in ddp["G_ema"].items():
        torch.testing.assert_close(zero["G_ema"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(zero["images"], ddp["images"], rtol=1e-4, atol=1e-5)
    assert len(set(zero["digest"])) == 1  # both ranks see the same G_ema


@pytest.mark.parametrize("kind", ["zero3", "zero3_default"])
def test_no_rank_holds_a_full_copy_of_G(cases, kind):
    zero = cases[kind]
    assert zero["full_copies"] == [[], []], "a tensor with the shape of a parameter of G outlived the step"
    assert cases["ddp"]["full_copies"] != [[], []]  # the check sees them when they are there: G and G_ema
    assert zero["G_live_numel"] == 0  # G's partitioned parameters are released after the step
    # G_ema holds this rank's half of every parameter of G (plus at most one element of padding each)
    assert zero["ema_numel"] <= 0.5 * zero["G_numel"] + 64


@pytest.mark.parametrize("kind", ["ddp", "zero3", "zero3_default"])
def test_checkpoint_keeps_G_ema_and_restores_it(cases, kind):
    case, ddp = cases[kind], cases["ddp"]
    for k, v in ddp["G_ema"].items():
        torch.testing.assert_close(case["consolidated"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        assert torch.equal(case["reloaded"][k], case["G_ema"][k]), k
    if kind != "ddp":  # ZeRO-3: one partition file per rank, nothing gathered into state.pt
        assert {"nets-rank-00000.pt", "nets-rank-00001.pt"} <= set(case["files"])
