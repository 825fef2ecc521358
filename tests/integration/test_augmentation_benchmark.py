"""benchmarks/augmentation.py --small: the whole pipeline (prepare, train, generate, classifiers, table) end to end."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from gandist.data.prepare import FASHION_MNIST_DIR
from gandist.training.checkpoint import latest_checkpoint, manifest
from tests.conftest import PYTHON, ROOT, run

pytestmark = pytest.mark.slow


def test_small_benchmark_has_every_condition_with_sane_accuracies_and_reuses_its_cache(tmp_path, monkeypatch):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)")
    # --work through a symbolic link (gandist generate records the checkpoint's resolved path): still reused
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "link").symlink_to(work)
    cmd = [PYTHON, str(ROOT / "benchmarks" / "augmentation.py"), "--small", "--work", str(tmp_path / "link")]
    cmd += ["--mix-truncation", "1", "--full-mix"]
    first = run(cmd, timeout=1800)
    result = json.loads((work / "augmentation-small.json").read_text())
    rows = {row["key"]: row for row in result["rows"]}
    expected = ["real-100%", "cas", "real-10%", "real-1%"]
    expected += [
        f"real-{f}+{n}pc-diffaugment{psi}-x{r}"
        for f, n in (("10%", 4), ("1%", 1))
        for psi in ("", "-psi1")
        for r in (1, 4)
    ]
    expected += [f"real-{f}+{kind}-x{r}" for f in ("10%", "1%") for kind in ("real", "full") for r in (1, 4)]
    assert sorted(rows) == sorted(expected)
    for row in rows.values():
        assert len(row["accuracies"]) == 1 and all(0 < acc <= 1 for acc in row["accuracies"]), row
    assert rows["real-100%"]["mean"] > 0.3  # 400 real images: well above chance (0.1)
    # the sets hold what their names say: class-balanced real subsets, generated images by the ratio
    assert [rows[k]["real_images"] for k in ("real-100%", "real-10%", "real-1%")] == [400, 40, 10]
    assert rows["cas"]["real_images"] == 0 and rows["cas"]["generated_images"] == 400
    assert rows["real-10%+4pc-diffaugment-x4"]["generated_images"] == 160
    assert rows["real-1%+1pc-diffaugment-x1"]["generated_images"] == 10
    # the bound: the subset plus as many real images from outside it, never counted as a generated mix
    bound = rows["real-10%+real-x4"]
    assert bound["real_images"] == 40 + 160 and bound["generated_images"] == 0 and bound["gen"] == ""
    assert "held-out" not in result["goals"]["mix_10%"]["best"]
    # --full-mix: the subset plus the full-data GAN's images (its CAS set), a bound kept out of the 10% goal
    full_mix = rows["real-10%+full-x4"]
    assert full_mix["real_images"] == 40 and full_mix["generated_images"] == 160 and full_mix["full_gan"]
    assert full_mix["gen"] == rows["cas"]["gen"] and full_mix["gan"] == rows["cas"]["gan"]
    assert not any(r["full_gan"] for k, r in rows.items() if "diffaugment" in k)
    assert "full-data" not in result["goals"]["mix_10%"]["best"]
    assert result["goals"]["full_mix_10%"]["best"] in (rows["real-10%+full-x1"]["label"], full_mix["label"])
    assert result["goals"]["held_out_10%"]["best"] in (rows["real-10%+real-x1"]["label"], bound["label"])
    spec = importlib.util.spec_from_file_location("augmentation", ROOT / "benchmarks" / "augmentation.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "augmentation", bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    full, subset = bench.load(work / "data" / "train-40pc"), bench.load(work / "data" / "train-4pc")
    x, y = bench.held_out(full, subset, 16)
    assert torch.bincount(y, minlength=10).tolist() == [16] * 10 and (full[1] == 0).sum() == 40
    assert not {image.numpy().tobytes() for image in x} & {image.numpy().tobytes() for image in subset[0]}
    # --mix-truncation: the same GAN's images drawn at psi 1, in a set of their own, beside the untruncated rows
    truncated = rows["real-10%+4pc-diffaugment-psi1-x4"]
    assert truncated["generated_images"] == 160 and truncated["gen"] != rows["real-10%+4pc-diffaugment-x4"]["gen"]
    assert json.loads((Path(truncated["gen"]) / "index.json").read_text())["generator"]["truncation"] == 1
    commands = "\n".join(result["commands"])
    for needed in ("gandist prepare fashion-mnist", "--per-class 4", "gandist train", "gandist generate"):
        assert needed in commands
    table = (work / "augmentation-small.md").read_text()
    assert "| real 10% + generated 1:4, truncation 1 |" in table
    assert "| real 10% + held-out real 1:4 | 200 | 0 | - |" in table and "10% real + held-out real vs" in table
    assert "| real 10% + full-data GAN's images 1:4 | 40 | 160 | GAN on real 100% |" in table
    assert "10% real + the full-data GAN's images vs" in table
    assert "| real 10% + generated 1:4 |" in table and "generated only (CAS)" in table and "CAS / real" in table

    # a second invocation reuses every step: no gandist command runs, the same numbers come back
    second = run(cmd, timeout=600)
    assert "[augmentation" in first.stdout and "gandist train" in first.stdout
    assert not any("] gandist " in line for line in second.stdout.splitlines())
    again = json.loads((work / "augmentation-small.json").read_text())
    assert [r["accuracies"] for r in again["rows"]] == [r["accuracies"] for r in result["rows"]]
    assert again["commands"] == result["commands"]

    # the GANs asked for with another recipe (another seed here): a run trained with the old one is neither
    # reported as the new one's nor continued; the benchmark stops with one line naming the run and the key
    stopped = run([*cmd, "train.seed=1"], timeout=600, check=False)
    said = [line for line in stopped.stderr.splitlines() if line.startswith("augmentation: ")]
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert len(said) == 1 and "/runs/" in said[0] and "train.seed=0, this command asks for 1" in said[0], said
    assert not any("] gandist " in line for line in stopped.stdout.splitlines())  # nothing trained or generated

    # the GANs trained again in their folders (moved aside, as the message says) write checkpoints of the same
    # names: their images are generated again and the classifiers on them trained again, not taken from the cache
    old = {row["key"]: row for row in result["rows"]}
    shutil.rmtree(work / "runs")
    third = run([*cmd, "train.seed=1"], timeout=900)
    generated = [line for line in third.stdout.splitlines() if "] gandist generate" in line]
    assert len(generated) == 5  # full, and each subset GAN's untruncated and psi 1 sets
    newer = json.loads((work / "augmentation-small.json").read_text())
    rows = {row["key"]: row for row in newer["rows"]}
    index = json.loads((Path(rows["real-10%+4pc-diffaugment-x4"]["gen"]) / "index.json").read_text())
    assert index["generator"]["checkpoint_sha256"] == manifest(latest_checkpoint(work / "runs" / "4pc-diffaugment"))
    assert rows["real-10%+4pc-diffaugment-x4"]["gen"] == old["real-10%+4pc-diffaugment-x4"]["gen"]  # same folder
    retrained = [line for line in third.stdout.splitlines() if "seed 0: test accuracy" in line]
    with_generated = [key for key, row in rows.items() if row["generated_images"] > 0]
    assert len(retrained) == len(with_generated) == 13, retrained  # real-only rows come from the cache
