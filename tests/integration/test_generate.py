"""`gandist generate` on a real checkpoint, and a new training run on the generated shards."""

import json
from io import BytesIO

import numpy as np
import pytest
import torch
from PIL import Image

from gandist.config import from_dict
from gandist.generator.sample import latents, to_uint8
from gandist.models import build_nets
from gandist.training.checkpoint import complete_checkpoints, manifest
from tests.conftest import BIN, run, train_cmd
from tests.generator_fixtures import read_dataset, tiny_trained_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def test_generated_shards_hold_G_ema_samples_and_train_a_new_run(run_dir, tmp_path):
    out = tmp_path / "gen"
    proc = run([str(BIN / "gandist"), "generate", str(run_dir), "--num", "40", "--out", str(out), "--name", "fake",
                "--shard-size", "10", "--batch", "16", "--seed", "3"])  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 40 and index["shards"] == [f"fake-{k:06d}.tar" for k in range(4)]
    assert (index["resolution"], index["channels"], index["num_classes"]) == (32, 1, 0)
    assert index["generator"]["seed"] == 3 and index["generator"]["net"] == "G_ema"
    # which weights made the images: the hashes the checkpoint's marker lists, beside its path
    latest = complete_checkpoints(run_dir)[-1]
    assert index["generator"]["checkpoint_sha256"] == manifest(latest) and "state.pt" in manifest(latest)
    pattern = f"{out}/fake-{{000000..000003}}.tar"
    assert f"data.shards={pattern}" in proc.stdout

    samples = read_dataset(out)
    assert sorted(samples) == list(range(40)) and all(set(e) == {"png"} for e in samples.values())
    state = torch.load(complete_checkpoints(run_dir)[-1] / "state.pt", weights_only=False)
    saved = from_dict(state["config"])
    G, _ = build_nets(saved.model, saved.train.seed)
    G.load_state_dict(state["G_ema"])
    with torch.no_grad():
        expected = to_uint8(G.eval()(latents(3, range(40), 16)))[:, 0].numpy()
    for key, entry in samples.items():
        assert np.array_equal(np.array(Image.open(BytesIO(entry["png"]))), expected[key]), key

    # the shards are training data as they are: a new run reads them through data.shards
    run(train_cmd(f"output_dir={tmp_path}", "run_name=on-fakes", f"data.shards={pattern}", "train.kimg=0.128"))
    summary = json.loads((tmp_path / "on-fakes" / "summary.json").read_text())
    assert summary["kimg"] >= 0.128 and summary["step"] == 4
    stats = [json.loads(line) for line in (tmp_path / "on-fakes" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["loss/D"] > 0 and np.isfinite(stats[-1]["loss/G"])
