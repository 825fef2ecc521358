"""The data pipeline in real 2-process launches (gloo on CPU), started like users start them."""

import json

import numpy as np
import pytest
import torch

from gandist.data.shards import ShardWriter, encode_image
from gandist.data.specs import expand_shards
from gandist.data.stream import ShardStream, StreamSpec
from tests.conftest import ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow


def _numbered_shards(folder, sizes, name="n"):
    """Shards of 32 px grey images whose label is a unique sample id; returns a comma list spec."""
    count, paths = 0, []
    for i, size in enumerate(sizes):
        with ShardWriter(folder, f"{name}{i}", shard_size=size) as w:
            for _ in range(size):
                image = np.full((32, 32), count % 251, np.uint8)
                w.write(f"{count:08d}", {"png": encode_image(image, "png"), "cls": str(count).encode()})
                count += 1
        paths += [str(p) for p in w.paths]
    return ",".join(paths), count


def test_two_processes_two_workers_read_what_they_should(tmp_path):
    sizes = [9, 5, 7, 3, 8, 6, 4, 10]  # 8 shards of uneven size: 2 ranks x 2 workers, 2 shards each
    spec, total = _numbered_shards(tmp_path, sizes)
    run(accelerate_cmd(ROOT / "tests/dist/data_ranks.py", str(tmp_path), spec), timeout=240)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    # finite: disjoint, complete, each rank exactly its shards (split by rank, then by worker)
    finite = [set(r["finite"]) for r in ranks]
    assert len(ranks[0]["finite"]) == len(finite[0]) and len(ranks[1]["finite"]) == len(finite[1])
    assert not finite[0] & finite[1] and finite[0] | finite[1] == set(range(total))
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    for r in range(2):
        expected = {starts[s] + k for s in range(r, len(sizes), 2) for k in range(sizes[s])}
        assert finite[r] == expected

    # endless: per-rank distinct, and the same stream a fresh process builds from (seed, rank, worker)
    endless = [r["endless"] for r in ranks]
    assert endless[0] != endless[1]
    for r in range(2):
        urls = expand_shards(spec)
        base = dict(urls=urls, batch_per_gpu=4, resolution=32, channels=1, seed=7, rank=r, world_size=2)
        loader = torch.utils.data.DataLoader(
            ShardStream(StreamSpec(**base, shuffle_buffer=8)), batch_size=None, num_workers=2, prefetch_factor=2
        )
        it = iter(loader)
        assert [next(it)[1].tolist() for _ in range(len(endless[r]))] == endless[r]


def test_ddp_training_over_uneven_and_truncated_shards_finishes_and_counts(tmp_path):
    spec, _ = _numbered_shards(tmp_path, [40, 25, 11, 30])
    last = spec.split(",")[-1]
    data = open(last, "rb").read()
    open(last, "wb").write(data[: len(data) // 2])  # a shard cut in half, listed three times: read often
    spec = f"{spec},{last},{last}"
    proc = run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            "--config",
            "configs/tiny.yaml",
            f"output_dir={tmp_path}",
            "run_name=uneven",
            f"data.shards={spec}",
            "data.num_workers=2",
            "data.max_bad_frac=0.5",
            "strategy.timeout_s=60",  # a rank left waiting fails the run within a minute instead of hanging
        ),
        timeout=300,
    )
    summary = json.loads((tmp_path / "uneven" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True and summary["kimg"] >= 0.256
    stats = [json.loads(line) for line in (tmp_path / "uneven" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["data/bad_total"] >= 1 and stats[-1]["data/samples_read"] > 0
    assert sum(s["data/bad_samples"] for s in stats) == stats[-1]["data/bad_total"]
    assert "ends without the end-of-archive marker" in proc.stderr or "truncated" in proc.stderr
    assert "bad sample(s) and 0 unreadable shard(s) this tick" in proc.stderr + proc.stdout
