"""Checkpoints written by gandist 0.1 (before the package layout changed) still resume, sample and export.

tests/data/run-v0.1 was written by the 0.1 code: `gandist train --config configs/tiny.yaml train.max_steps=2
train.grid_size=4 model.g_width=4 model.d_width=4 model.z_dim=8 augment.ada=[xflip] augment.p=0.2
train.lecam_weight=0.1` (a DCGAN with ADA and LeCam state, 2 steps).
"""

import json
import shutil

import pytest
import torch

from gandist.generator.load import load_trained
from tests.conftest import BIN, ROOT, run, train_cmd

pytestmark = pytest.mark.slow

OLD_RUN = ROOT / "tests" / "data" / "run-v0.1"
SETTINGS = [
    "model.g_width=4",
    "model.d_width=4",
    "model.z_dim=8",
    "augment.ada=[xflip]",
    "augment.p=0.2",
    "train.lecam_weight=0.1",
    "train.grid_size=4",
]


def test_a_0_1_run_resumes_where_it_stopped(tmp_path):
    shutil.copytree(OLD_RUN, tmp_path / "v01")
    out = run(train_cmd(*SETTINGS, f"output_dir={tmp_path}", "run_name=v01", "train.max_steps=2"))
    assert "resumed from" in out.stderr and "step-000000002" in out.stderr
    summary = json.loads((tmp_path / "v01" / "summary.json").read_text())
    assert summary["step"] == 4 and summary["kimg"] == pytest.approx(0.128)


def test_a_0_1_checkpoint_samples_and_exports(tmp_path):
    tg = load_trained(OLD_RUN)
    assert tg.checkpoint.name == "step-000000002" and tg.z_dim == 8
    saved = torch.load(tg.checkpoint / "state.pt", map_location="cpu", weights_only=True)  # plain data only
    for key, value in tg.G.state_dict().items():
        assert torch.equal(value, saved["G_ema"][key])
    out = run([str(BIN / "gandist"), "export", str(OLD_RUN), "--out", str(tmp_path / "g.safetensors")])
    assert (tmp_path / "g.safetensors").is_file() and "G_ema" in out.stdout
