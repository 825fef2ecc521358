"""Real 2-process CPU runs (gloo), launched the way users launch them."""

import json

import pytest
import torch

from gandist.config import from_dict
from gandist.models import build_nets
from tests.conftest import PYTHON, ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow


def test_two_process_training_keeps_ranks_in_sync(tmp_path):
    proc = run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            "--config",
            "configs/tiny.yaml",
            f"output_dir={tmp_path}",
            "run_name=ddp",
            "data.num_workers=1",
        )
    )
    run_dir = tmp_path / "ddp"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert [d["rank"] for d in summary["rank_digests"]] == [0, 1]
    assert summary["params_in_sync"] is True
    assert "2 process(es)" in proc.stderr + proc.stdout
    # both nets moved away from their (seeded, identical) initial weights
    state = torch.load(next((run_dir / "checkpoints").glob("step-*")) / "state.pt", weights_only=False)
    saved = from_dict(state["config"])
    G0, D0 = build_nets(saved.model, saved.train.seed)
    for name, net in (("G", G0), ("D", D0)):
        moved = [not torch.equal(v, state[name][k]) for k, v in net.state_dict().items() if v.is_floating_point()]
        assert all(moved), f"{name} has tensors that did not change"
    lines = (run_dir / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["loss/D"] > 0 for x in lines)


@pytest.mark.parametrize("loss", ["nonsaturating", "relativistic"])  # relativistic: G's step pairs fakes with reals
def test_two_processes_equal_one_process_at_same_global_batch(tmp_path, loss):
    run([PYTHON, str(ROOT / "tests/dist/one_step.py"), str(tmp_path / "one.pt"), loss])
    run(accelerate_cmd(ROOT / "tests/dist/one_step.py", str(tmp_path / "two.pt"), loss))
    one = torch.load(tmp_path / "one.pt", weights_only=False)
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    assert (one["world"], two["world"]) == (1, 2)
    assert two["released"] is True  # DDP wrappers dropped before the process group was destroyed
    for key in ("loss/D", "loss/G", "score/real", "score/fake"):
        assert two["losses"][key] == pytest.approx(one["losses"][key], rel=1e-5, abs=1e-6), key
    # gradients (Adam's first moment is 0.1 * grad after one step) and updated weights
    for name in ("exp_avg_G", "exp_avg_D"):
        for a, b in zip(one[name], two[name]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    for net in ("G", "D"):
        for k in one[net]:
            if k.endswith("running_var"):
                continue  # unbiased estimate over 8 vs 16 samples: legitimately different
            torch.testing.assert_close(two[net][k], one[net][k], rtol=1e-4, atol=1e-6, msg=f"{net}.{k}")


def test_compiled_ddp_training_keeps_ranks_in_sync(tmp_path):
    # torch.compile of the DDP wrappers (aot_eager: AOTAutograd's graphs without inductor's C++ build); R1/R2 run eager
    proc = run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            "--config",
            "configs/tiny.yaml",
            f"output_dir={tmp_path}",
            "run_name=ddp",
            "data.num_workers=1",
            "train.compile=true",
            "train.compile_backend=aot_eager",
            "train.r1_gamma=1",
            "train.r2_gamma=1",  # R2: G's forward inside the lazy D step too
            "train.r1_interval=4",
        )
    )
    assert "compiled (aot_eager)" in proc.stderr and "WARNING train.compile" not in proc.stderr
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True and summary["step"] == 8
