"""The benchmarks reuse a cached gandist run only while it was trained with the config the command asks for.

quality.py and augmentation.py keep their runs under --work and reuse one that reached --kimg. A run trained with
another recipe (the config file changed since, or other key=value overrides) must not be reported as this one's,
nor continued with a second recipe: the benchmark stops with one line naming the run, the key and both values.
The runs here are folders as `gandist train` leaves them (config.yaml, summary.json, stats.jsonl), no training.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from gandist.config import load_config, to_yaml
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "fashion_mnist_best.yaml"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


quality, augmentation = _module("quality"), _module("augmentation")


def _quality(work: Path, extra: list[str]) -> tuple[list[str], object]:
    """The overrides quality.py gives `gandist train` for run 'r', and the call that trains or reuses it."""
    overrides = [f"data.shards={work / 'data'}", "train.kimg=2", f"output_dir={work / 'runs'}", "run_name=r", *extra]
    return overrides, lambda: quality.gandist_run("r", CONFIG, str(work / "data"), 2, work, extra)


def _augmentation(work: Path, extra: list[str]) -> tuple[list[str], object]:
    runs = augmentation.shown(work / "runs")
    overrides = [f"data.shards={augmentation.shown(work / 'data')}", "train.kimg=2", f"output_dir={runs}",
                 "run_name=r", "tracking.report_to=none", *extra]  # fmt: skip
    return overrides, lambda: augmentation.train_gan(augmentation.Commands(work), "r", CONFIG, work / "data", 2, extra)


BENCHMARKS = {"quality": _quality, "augmentation": _augmentation}


def _trained(work: Path, overrides: list[str], kimg: float = 2.0, drop: str = "") -> Path:
    """A run folder as `gandist train --config CONFIG *overrides` leaves it after `kimg` (config.yaml written by
    the same function gandist uses); `drop`: a key its config.yaml lacks, as one written by an older gandist."""
    run_dir = work / "runs" / "r"
    run_dir.mkdir(parents=True)
    text = to_yaml(load_config(CONFIG, overrides))
    if drop:
        section, key = drop.split(".")
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"  {key}:"))
    (run_dir / "config.yaml").write_text(text + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"kimg": kimg}))
    (run_dir / "stats.jsonl").write_text(json.dumps({"kimg": kimg, "sec_per_kimg": 10.0}) + "\n")
    return run_dir


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a benchmark starts `gandist train`; record what it would have run."""
    started = []

    def refuse(cmd, **kwargs):
        started.append(cmd)
        return 0

    monkeypatch.setattr(quality, "run_child", refuse)
    monkeypatch.setattr(augmentation, "run_child", refuse)
    return started


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_run_trained_with_the_asked_config_is_reused(tmp_path, no_training, name):
    overrides, call = BENCHMARKS[name](tmp_path, ["train.seed=1"])
    _trained(tmp_path, overrides)
    call()
    assert no_training == []


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_run_trained_with_another_config_stops_the_benchmark_naming_the_key(tmp_path, no_training, name):
    overrides, _ = BENCHMARKS[name](tmp_path, ["G_opt.lr=0.0001"])  # the run was trained with another rate
    run_dir = _trained(tmp_path, overrides)
    _, call = BENCHMARKS[name](tmp_path, [])  # the command asks for the config file's rate
    with pytest.raises(SystemExit) as stop:
        call()
    message = str(stop.value)
    assert message.startswith(f"{name}: ") and "\n" not in message
    assert str(run_dir) in message or augmentation.shown(run_dir) in message
    assert "G_opt.lr" in message and "0.0001" in message and str(load_config(CONFIG).G_opt.lr) in message
    assert no_training == []  # neither reused nor continued with a second recipe


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_shorter_run_with_another_config_is_not_continued(tmp_path, no_training, name):
    overrides, _ = BENCHMARKS[name](tmp_path, ["train.mode_seeking_weight=0.8"])
    _trained(tmp_path, overrides, kimg=1.0)
    _, call = BENCHMARKS[name](tmp_path, [])
    with pytest.raises(SystemExit, match="train.mode_seeking_weight"):
        call()
    assert no_training == []


def test_settings_that_do_not_change_what_is_trained_may_differ(tmp_path, no_training):
    # quality.py's --every sets the checkpoint interval; a run made with another --every is the same run
    overrides, _ = _quality(tmp_path, ["train.checkpoint_kimg=5", "train.keep_checkpoints=100000"])
    _trained(tmp_path, overrides)
    _, call = _quality(tmp_path, ["train.checkpoint_kimg=20", "train.keep_checkpoints=100000"])
    call()
    assert no_training == []


def test_a_key_the_run_predates_is_not_a_difference(tmp_path, no_training):
    # a run from an older gandist has no line for a key added since; the key's default is what it trained with
    overrides, call = _quality(tmp_path, [])
    _trained(tmp_path, overrides, drop="train.mode_seeking_weight")
    call()
    assert no_training == []


def test_a_shorter_run_with_the_asked_config_is_continued(tmp_path, no_training):
    overrides, call = _quality(tmp_path, [])
    _trained(tmp_path, overrides, kimg=1.0)
    call()
    assert len(no_training) == 1 and "run_name=r" in no_training[0]


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_a_mistyped_key_beside_a_cached_run_is_one_line_naming_it(tmp_path, no_training, name):
    overrides, _ = BENCHMARKS[name](tmp_path, [])
    _trained(tmp_path, overrides)
    _, call = BENCHMARKS[name](tmp_path, ["train.mode_seeking_wieght=0.8"])
    with pytest.raises(SystemExit) as stop:
        call()
    assert str(stop.value).startswith(f"{name}: ") and "train.mode_seeking_wieght" in str(stop.value)
    assert no_training == []
