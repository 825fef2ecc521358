"""How `generate` splits, names, labels and indexes a generated dataset (one process; see tests/dist for two)."""

import itertools
import json
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from gandist.generator.generate import GenerateSpec, generate, rank_shards, shard_ranges, validate
from gandist.generator.load import SamplingError
from tests.generator_fixtures import read_dataset, toy_conditional, toy_pixel


def test_ranks_get_contiguous_disjoint_shards_covering_every_index():
    for num, shard_size, world in itertools.product([1, 7, 50, 64, 1001], [1, 8, 2000], [1, 2, 3, 8]):
        ranges = shard_ranges(num, shard_size)
        assert all(1 <= len(r) <= shard_size for r in ranges)
        seen, per_rank = [], []
        for rank in range(world):
            mine = rank_shards(len(ranges), world, rank)
            per_rank.append(len(mine))
            indices = [i for k in mine for i in ranges[k]]
            if indices:
                assert indices == list(range(indices[0], indices[-1] + 1)), (num, shard_size, world, rank)
            seen += indices
        assert seen == list(range(num)), (num, shard_size, world)  # in rank order: no gaps, no duplicates
        assert max(per_rank) - min(per_rank) <= 1


def test_balanced_labels_keys_and_index(tmp_path):
    spec = GenerateSpec(num=10, out_dir=tmp_path / "gen", name="toy", shard_size=4, batch=3, balanced=True)
    index = generate(toy_conditional(3), spec)
    assert index["shards"] == ["toy-000000.tar", "toy-000001.tar", "toy-000002.tar"]
    assert index["num_samples"] == 10 and index["format"] == "png" and index["num_classes"] == 3
    assert index["label_counts"] == {"0": 4, "1": 3, "2": 3}
    assert json.loads((tmp_path / "gen" / "index.json").read_text()) == index
    samples = read_dataset(tmp_path / "gen")
    assert sorted(samples) == list(range(10))
    for key, entry in samples.items():
        label = int(entry["cls"])
        assert label == key % 3
        pixels = np.array(Image.open(BytesIO(entry["png"])))
        assert pixels.shape == (32, 32) and (pixels == toy_pixel(label)).all()
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["index.json", *index["shards"]]  # no staging left


def test_one_class_and_npy(tmp_path):
    spec = GenerateSpec(num=5, out_dir=tmp_path, name="one", fmt="npy", shard_size=2, class_id=1, compress=True)
    index = generate(toy_conditional(3), spec)
    assert index["shards"][-1] == "one-000002.tar.gz" and index["label_counts"] == {"0": 0, "1": 5, "2": 0}
    samples = read_dataset(tmp_path)
    assert sorted(samples) == list(range(5)) and {e["cls"] for e in samples.values()} == {b"1"}
    assert all(np.load(BytesIO(e["npy"])).shape == (32, 32) for e in samples.values())
    assert (tmp_path / "one-000000.tar.gz").read_bytes()[4:8] == bytes(4)  # gzip mtime 0: reproducible bytes


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    tg = toy_conditional(3)
    generate(tg, GenerateSpec(num=9, out_dir=tmp_path, name="d", shard_size=3, balanced=True))
    again = GenerateSpec(num=4, out_dir=tmp_path, name="d", shard_size=3, balanced=True)
    with pytest.raises(SamplingError, match="already holds a dataset.*--overwrite"):
        generate(tg, again)
    again.overwrite = True
    index = generate(tg, again)
    # the third shard of the larger dataset is gone, so a glob of the folder finds only the new one
    assert sorted(p.name for p in tmp_path.glob("d-*")) == index["shards"] == ["d-000000.tar", "d-000001.tar"]
    assert sorted(read_dataset(tmp_path)) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num": 0}, "--num must be >= 1"),
        ({"num": -5}, "--num must be >= 1"),
        ({"shard_size": 0}, "--shard-size"),
        ({"fmt": "gif"}, "--format 'gif'"),
        ({"name": "a/b"}, "--name"),
        ({"balanced": False}, "conditioned on 3 classes"),
        ({"class_id": 3, "balanced": False}, "--class 3 is out of range"),
        ({"num": None, "balanced": False}, "pass --num N, or --per-class N"),
        ({"num": None, "per_class": 0, "balanced": False}, "--per-class must be >= 1"),
        ({"per_class": 2, "balanced": False}, "--num and --per-class exclude each other"),
        ({"num": None, "per_class": 2}, "--per-class balances the classes itself: drop --class-balanced"),
        ({"num": None, "per_class": 2, "class_id": 1, "balanced": False}, "drop --class 1"),
    ],
)
def test_bad_requests_are_refused_before_any_work(tmp_path, change, message):
    spec = GenerateSpec(**{"num": 4, "out_dir": tmp_path / "x", "balanced": True, **change})
    with pytest.raises(SamplingError, match=message):
        validate(spec, 3)
    assert not (tmp_path / "x").exists()


def test_per_class_writes_n_images_of_each_class(tmp_path):
    spec = GenerateSpec(num=None, per_class=4, out_dir=tmp_path, name="pc", shard_size=5, batch=3)
    index = generate(toy_conditional(3), spec)
    assert index["num_samples"] == 12 and index["label_counts"] == {"0": 4, "1": 4, "2": 4}
    assert index["generator"]["per_class"] == 4 and index["generator"]["class_balanced"]
    samples = read_dataset(tmp_path)
    assert sorted(samples) == list(range(12))
    for key, entry in samples.items():
        assert int(entry["cls"]) == key % 3
        assert (np.array(Image.open(BytesIO(entry["png"]))) == toy_pixel(key % 3)).all()
    # the first 3M keys hold M images of each class: a balanced prefix for any M <= 4
    assert sorted(int(samples[k]["cls"]) for k in range(6)) == [0, 0, 1, 1, 2, 2]


def test_per_class_refuses_an_unconditional_model(tmp_path):
    with pytest.raises(SamplingError, match="--per-class: the model is unconditional"):
        validate(GenerateSpec(num=None, per_class=3, out_dir=tmp_path), 0)


def test_labels_are_cls_text_digits_that_webdataset_and_the_training_reader_read(tmp_path):
    import webdataset as wds

    from gandist.data.specs import expand_shards
    from gandist.data.stream import ShardStream, StreamSpec

    generate(toy_conditional(3), GenerateSpec(num=None, per_class=5, out_dir=tmp_path, name="g", shard_size=4))
    samples = read_dataset(tmp_path)
    assert all(entry["cls"] == str(key % 3).encode("ascii") for key, entry in samples.items())  # b"0", b"1", ...
    urls = expand_shards(str(tmp_path))
    pairs = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "cls"))
    assert sorted((int(key), label) for key, _, label in pairs) == [(k, k % 3) for k in range(15)]
    assert all(isinstance(label, int) for _, _, label in pairs)
    spec = StreamSpec(urls, 100, 32, 1, 0, 0, shuffle_buffer=0, finite=True)
    images, labels, bad = next(iter(ShardStream(spec)))[:3]
    assert bad == 0 and sorted(labels.tolist()) == sorted(k % 3 for k in range(15))
    assert all((images[i] == toy_pixel(int(labels[i]))).all() for i in range(len(labels)))


def test_generate_command_checks_the_count_before_reading_the_model(tmp_path, capsys):
    from gandist.cli import main as gandist

    missing = str(tmp_path / "no-such-run")
    assert gandist(["generate", missing, "--out", str(tmp_path / "o"), "--per-class", "0"]) == 2
    assert "--per-class must be >= 1" in capsys.readouterr().err
    assert gandist(["generate", missing, "--out", str(tmp_path / "o"), "--per-class", "3", "--num", "9"]) == 2
    assert "--num and --per-class exclude each other" in capsys.readouterr().err
    assert gandist(["generate", missing, "--out", str(tmp_path / "o")]) == 2
    assert "pass --num N, or --per-class N" in capsys.readouterr().err
