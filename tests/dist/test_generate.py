"""`gandist generate` on 2 CPU processes (gloo), launched the way users launch it."""

import json
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PYTHON, ROOT, accelerate_cmd, run
from tests.generator_fixtures import read_dataset, tiny_trained_run, toy_pixel

pytestmark = pytest.mark.slow


def test_two_processes_write_the_dataset_one_process_writes(tmp_path_factory, tmp_path):
    run_dir = tiny_trained_run(tmp_path_factory)
    args = ["generate", str(run_dir), "--num", "50", "--shard-size", "8", "--batch", "5", "--name", "g"]
    run([PYTHON, "-m", "gandist.cli", *args, "--out", str(tmp_path / "one")])
    two = run(accelerate_cmd("-m", "gandist.cli", *args, "--out", str(tmp_path / "two")))
    # 7 shards: rank 0 writes shards 0-2 (24 images), rank 1 shards 3-6 (26)
    assert "rank 0 of 2" in two.stderr and "/24 " in two.stderr

    one_index, two_index = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("one", "two"))
    assert two_index["shards"] == [f"g-{k:06d}.tar" for k in range(7)] == one_index["shards"]
    assert two_index["num_samples"] == 50
    samples = read_dataset(tmp_path / "two")  # fails on a duplicate key
    assert sorted(samples) == list(range(50))  # no gaps
    images = {k: np.array(Image.open(BytesIO(e["png"]))) for k, e in samples.items()}
    assert len({im.tobytes() for im in images.values()}) == 50  # 50 distinct images
    for name in two_index["shards"]:  # byte for byte what one process writes
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(["index.json", *two_index["shards"]])


def test_two_processes_label_a_conditional_model_class_balanced(tmp_path):
    script = ROOT / "tests/dist/generate_toy_conditional.py"
    proc = run(accelerate_cmd(script, str(tmp_path), "22"), env={"PYTHONPATH": str(ROOT)})  # it imports tests/
    assert "rank 0 of 2 wrote" in proc.stdout and "rank 1 of 2 wrote" in proc.stdout
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["num_samples"] == 22 and len(index["shards"]) == 6
    assert index["label_counts"] == {"0": 8, "1": 7, "2": 7}
    samples = read_dataset(tmp_path)
    assert sorted(samples) == list(range(22))
    for key, entry in samples.items():
        assert int(entry["cls"]) == key % 3
        assert (np.array(Image.open(BytesIO(entry["png"]))) == toy_pixel(key % 3)).all()
