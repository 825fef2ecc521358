#!/usr/bin/env python3
"""Does generated data help a classifier? Fashion-MNIST 32 px: real, generated and mixed training sets.

    .venv/bin/python benchmarks/augmentation.py --small                      # the whole pipeline in ~2 minutes
    .venv/bin/python benchmarks/augmentation.py                              # the full benchmark (hours on CPU)
    .venv/bin/python benchmarks/augmentation.py --full-run runs/best --low-data diffaugment,ada

One small classifier, fixed here (architecture, optimizer, step budget, seeds), is trained on each
training set and measured on the real test split (10,000 images); mean and standard deviation over
--seeds classifier seeds. Training sets:

  real 100%           the 60,000 training images
  generated (CAS)     60,000 class-balanced images of a class-conditional GAN trained on the 60,000
                      (Classification Accuracy Score); --cas-truncation adds rows at those psi
  real 10%, 1%        class-balanced subsets (600 and 60 images of each class, seeded, nested)
  real x% + 1:R       the subset plus R generated images per real one, from a class-conditional GAN
                      trained only on that subset, for each --ratios R and each --low-data variant
                      (none: the recipe as it is; diffaugment; ada; diffaugment-class: DiffAugment and
                      the class loss, train.class_weight_d/g); --mix-truncation adds the same
                      rows with the GAN's images drawn at those psi
  real x% + held-out  the subset plus R real images per real one from outside it, for each --ratios R:
                      what a generator as good as the data could add (the bound for the mixes above)
  real x% + full GAN  --full-mix: the subset plus R images per real one from the GAN on the 60,000 (the CAS
                      set): what this recipe could add if it learned from ten (a hundred) times the data

Steps (each cached under --work and reused when present, as benchmarks/quality.py does), all through
gandist's own commands, each printed and kept in the table:

 1. data        gandist prepare fashion-mnist (train, test; the subsets with --per-class)
 2. GANs        gandist train --gan-config at --kimg: `full` on the 60,000 (or --full-run DIR), and one per
                subset and --low-data variant; a run that reached --kimg is reused, a shorter one continued,
                one trained with another recipe (its config.yaml) stops the script, naming the key
 3. generated   gandist generate RUN --per-class N (keys 0 .. 10N-1, class i mod 10: the first 10M keys
                hold M images of each class, so every mixing ratio takes a class-balanced prefix); reused
                while the run's newest checkpoint has the path and file hashes its index.json records
 4. classifier  per training set and seed; results cached with the budget and data they were made with
 5. table       Markdown and JSON in --work, with the goals: CAS >= 0.85x the real-data accuracy, and
                with 10% of the data, real + generated beats real only by >= 1 point and by more
                than twice the larger standard deviation of the two

The classifier's budget is a number of optimizer steps, not epochs: every training set gets the same
number of updates on the same number of images, so the conditions differ only in what the images
are. With epochs, the 1% set would get 1/100 of the updates of the full set (measuring under-training,
not data), and adding generated images would add updates too, crediting the extra compute to them.
The budget, 4000 steps of batch 64, is one at which more real data shows: at 1000 steps the classifier
scored 87.47% on the 60,000 and 87.16% on 10% of them (it could not use the rest), at 4000 steps 90.27%
and 89.01% (one seed; real-only rows, which cannot favour generated images).
Batches are drawn from the pool of real and generated images at random, so a 1:R mix shows the
classifier R/(1+R) generated images per batch on average. Every set gets the same standard
augmentation (horizontal flips, translations of up to 2 pixels), so generated images are credited
only with what cheap augmentation does not already give. Beyond that budget (chosen on real-only rows),
test images are never used to choose anything: the classifier is measured once, after its last step.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import run_child  # noqa: E402
from benchmarks.runs import train_seconds, trained_kimg  # noqa: E402
from gandist.data.images import decode_array  # noqa: E402
from gandist.data.specs import expand_shards, iter_shard  # noqa: E402
from gandist.training.checkpoint import latest_checkpoint, manifest  # noqa: E402

NUM_CLASSES = 10
LOW_DATA = {  # the low-data GAN variants: gandist overrides added to --gan-config
    "none": [],
    "diffaugment": ["augment.diffaugment=[color,translation,cutout]"],
    "ada": ["augment.ada=[xflip,rotate90,translate,scale,rotate,brightness,contrast]"],
    # DiffAugment and the class loss (D's projection head read as a classifier): labels the GAN keeps
    "diffaugment-class": [
        "augment.diffaugment=[color,translation,cutout]",
        "train.class_weight_d=0.5",
        "train.class_weight_g=0.5",
    ],
}


def log(text: str) -> None:
    print(f"[augmentation {time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass(frozen=True)
class Budget:
    """Sizes and budgets of one mode (full or --small)."""

    train_per_class: int
    """Real training images of each class in the 100% set (0: the whole split)."""
    test_per_class: int
    """Test images of each class (0: the whole test split)."""
    steps: int
    """Classifier optimizer steps, whatever the training set."""
    batch: int
    """Classifier batch size."""
    seeds: int
    """Classifier seeds."""
    kimg: float
    """GAN budget: thousands of real images shown to D."""


FULL = Budget(train_per_class=0, test_per_class=0, steps=4000, batch=64, seeds=3, kimg=100)
SMALL = Budget(train_per_class=40, test_per_class=50, steps=100, batch=32, seeds=1, kimg=0.064)
SMALL_GAN = [  # --small: narrow nets and gandist's tiny settings, so each run takes seconds: a smoke run
    "model.g_width=8",
    "model.d_width=8",
    "train.tick_kimg=0.064",
    "train.snapshot_kimg=0.064",
    "train.checkpoint_kimg=0",
    "train.grid_size=16",
    "data.shuffle_buffer=64",
    "data.num_workers=0",
]
FULL_GAN = ["train.checkpoint_kimg=5"]  # a benchmark cut short resumes its GAN from at most 5 kimg back
FRACTIONS = {"10%": 0.10, "1%": 0.01}


# ----------------------------------------------------------------------------------------------
# gandist's commands


class Commands:
    """Runs `gandist ...` in subprocesses and keeps every command line for the table."""

    def __init__(self, work: Path):
        self.work = work
        self.lines: list[str] = []
        self.seconds: dict[str, float] = {}

    def note(self, args: list[str], seconds: float | None = None, what: str = "") -> None:
        """Record a command (made now or earlier: cached steps keep theirs) for the table."""
        line = "gandist " + shlex.join(args)
        if line not in self.lines:
            self.lines.append(line)
        if seconds is not None and what:
            self.seconds[what] = round(seconds, 1)

    def run(self, args: list[str], what: str) -> float:
        """Run `gandist ARGS` (this Python, this checkout); returns its wall time; stops on failure."""
        log("gandist " + shlex.join(args))
        start = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        status = run_child([sys.executable, "-m", "gandist", *args], cwd=ROOT, env=env)
        if status != 0:
            raise SystemExit(f"augmentation: `gandist {shlex.join(args)}` exited {status} ({what})")
        seconds = time.perf_counter() - start
        self.note(args, seconds, what)
        return seconds


def shown(path: Path) -> str:
    """A path as the commands name it: relative to the checkout (where they run) when inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def marker(folder: Path) -> dict | None:
    """What a finished step left in its folder (augmentation.json), if it finished."""
    path = folder / "augmentation.json"
    return json.loads(path.read_text()) if path.is_file() else None


def mark(folder: Path, info: dict) -> None:
    (folder / "augmentation.json").write_text(json.dumps(info, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# 1. data


def prepare(cmd: Commands, name: str, extra: list[str]) -> Path:
    """`gandist prepare fashion-mnist WORK/data/NAME EXTRA`, once."""
    out = cmd.work / "data" / name
    args = ["prepare", "fashion-mnist", shown(out), *extra]
    done = marker(out)
    if done and done["args"] == args:
        cmd.note(args, done["seconds"], f"prepare {name}")
        return out
    seconds = cmd.run([*args, "--overwrite"] if (out / "index.json").is_file() else args, f"prepare {name}")
    mark(out, {"args": args, "seconds": seconds})
    return out


def subset_sizes(budget: Budget) -> dict[str, int]:
    """Images of each class in each real training set: 100% and the FRACTIONS of it (at least 1)."""
    full = budget.train_per_class or 6000
    return {"100%": full, **{label: max(1, round(f * full)) for label, f in FRACTIONS.items()}}


def prepare_all(cmd: Commands, budget: Budget) -> dict[str, Path]:
    """Folders of the test split and of every real training set."""
    folders = {"test": prepare(cmd, "test", ["--split", "test", *per_class(budget.test_per_class)])}
    for label, n in subset_sizes(budget).items():
        whole = label == "100%" and not budget.train_per_class
        folders[label] = prepare(cmd, "train" if whole else f"train-{n}pc", [] if whole else per_class(n))
    return folders


def per_class(n: int) -> list[str]:
    return ["--per-class", str(n)] if n else []


def load(folder: Path, limit_per_class: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 1 x 32 x 32 images and int64 labels of a dataset, read with gandist's shard reader in key
    order; with `limit_per_class` M, only keys below 10 M (a generated dataset's first M of each class)."""
    images, labels, keys = [], [], []
    for url in expand_shards(str(folder)):
        for sample in iter_shard(url):
            key = int(sample["__key__"])
            if limit_per_class and key >= NUM_CLASSES * limit_per_class:
                continue
            images.append(decode_array(sample, 1)[:, :, 0])
            labels.append(int(sample["cls"]))  # .cls: text digits, as the training reader reads them
            keys.append(key)
    order = np.argsort(keys)
    x = torch.from_numpy(np.stack(images)[order])[:, None]
    y = torch.tensor(labels, dtype=torch.int64)[torch.from_numpy(order)]
    if limit_per_class and not (torch.bincount(y, minlength=NUM_CLASSES) == limit_per_class).all():
        raise SystemExit(f"augmentation: {folder} has fewer than {limit_per_class} images of some class")
    return x, y


# ----------------------------------------------------------------------------------------------
# 2. GANs and 3. generated data


def train_gan(cmd: Commands, name: str, config: Path, data: Path, kimg: float, extra: list[str]) -> Path:
    """`gandist train` on `data` unless the run reached `kimg` (a shorter run is continued); its folder."""
    runs = cmd.work / "runs"
    run_dir = runs / name
    args = ["train", "--config", shown(config), f"data.shards={shown(data)}", f"train.kimg={kimg:g}",
            f"output_dir={shown(runs)}", f"run_name={name}", "tracking.report_to=none", *extra]  # fmt: skip
    if trained_kimg(run_dir, config, args[3:], "augmentation") >= kimg:  # stops if the run had another recipe
        cmd.note(args, train_seconds(run_dir), f"train {name}")
        return run_dir
    cmd.run(args, f"train {name}")
    cmd.seconds[f"train {name}"] = train_seconds(run_dir)  # what training took, whatever the jobs were
    return run_dir


def generated(cmd: Commands, run_dir: Path, name: str, n_per_class: int, truncation: float | None = None) -> Path:
    """`gandist generate RUN --per-class N` into WORK/gen/NAME, unless it holds at least N of each class of
    the run's newest checkpoint."""
    out = cmd.work / "gen" / name
    args = ["generate", shown(run_dir), "--per-class", str(n_per_class), "--out", shown(out), "--seed", "0"]
    if truncation is not None:
        args += ["--truncation", f"{truncation:g}"]
    checkpoint = latest_checkpoint(run_dir)
    done, index = marker(out), out / "index.json"
    if done and index.is_file():
        gen = json.loads(index.read_text())["generator"]
        same = Path(gen["checkpoint"]).resolve() == checkpoint.resolve()  # generate records resolved paths
        same = same and gen.get("checkpoint_sha256") == manifest(checkpoint)  # and the weights' hashes
        if same and gen["per_class"] >= n_per_class and gen["truncation"] == truncation:
            cmd.note(done["args"], done["seconds"], f"generate {name}")
            return out
    seconds = cmd.run([*args, "--overwrite"], f"generate {name}")
    mark(out, {"args": [*args, "--overwrite"], "seconds": seconds})
    return out


# ----------------------------------------------------------------------------------------------
# 4. classifier


class Classifier(nn.Module):
    """Three conv stages (16, 32, 64 channels; BatchNorm, ReLU, 2x2 max-pool) and a 128-wide hidden layer."""

    def __init__(self):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.net = nn.Sequential(
            stage(1, 16), stage(16, 32), stage(32, 64), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(),
            nn.Dropout(0.3), nn.Linear(128, NUM_CLASSES),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to 2 pixels (background-filled) of a float batch."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 4)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return cropped.gather(3, cols)


def train_classifier(x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int) -> Classifier:
    """The classifier after `steps` AdamW steps on batches drawn from (x, y) in shuffled passes."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initial weights, dropout
    model = Classifier()
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    model.train()
    order, pos = torch.randperm(len(x), generator=generator), 0
    for _ in range(steps):
        if pos + batch > len(order):  # a pool smaller than a batch repeats within it
            order, pos = torch.cat([order[pos:], torch.randperm(len(x), generator=generator)]), 0
            while len(order) < batch:
                order = torch.cat([order, torch.randperm(len(x), generator=generator)])
        take = order[pos : pos + batch]
        pos += batch
        loss = F.cross_entropy(model(augment(to_float(x[take]), generator)), y[take])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(to_float(x[i : i + 1000])).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000)
    )
    return correct / len(x)


@dataclass
class Condition:
    """One training set: real images of a subset, plus generated ones."""

    key: str
    label: str
    real: str
    """Which real set ('100%', '10%', '1%'), or '' for none."""
    gen: Path | None = None
    """Generated dataset folder, or None."""
    gen_per_class: int = 0
    """Generated images of each class taken from it."""
    gan: str = ""
    """What made the generated images, for the table."""
    group: str = ""
    """Rows compared with each other: the real set they add to."""
    held_out_per_class: int = 0
    """Real images of each class from outside the subset added to it: what a perfect generator could add."""
    full_gan: bool = False
    """Generated images added to a subset come from the GAN on all the data (--full-mix): a bound, not a mix."""


def held_out(full: tuple, subset: tuple, n_per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n_per_class` images of each class of the full training set (key order) that are not in the
    subset (compared by pixels: the subsets are prepared from the same source)."""
    seen = {image.numpy().tobytes() for image in subset[0]}
    x, y = full
    outside = torch.tensor([image.numpy().tobytes() not in seen for image in x])
    keep = torch.cat([torch.nonzero(outside & (y == c)).flatten()[:n_per_class] for c in range(NUM_CLASSES)])
    if len(keep) < NUM_CLASSES * n_per_class:
        raise SystemExit(f"augmentation: fewer than {n_per_class} real images of some class outside the subset")
    keep = keep.sort().values
    return x[keep], y[keep]


def measure(cmd: Commands, cond: Condition, real: dict, test: tuple, budget: Budget) -> dict:
    """Accuracy on the test set of the classifier trained on a condition's set, for every seed (cached)."""
    folder = cmd.work / "classifier"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [real[cond.real]] if cond.real else []
    if cond.held_out_per_class:
        parts.append(held_out(real["100%"], real[cond.real], cond.held_out_per_class))
    generator = {}
    if cond.gen is not None:
        parts.append(load(cond.gen, cond.gen_per_class))
        generator = json.loads((cond.gen / "index.json").read_text())["generator"]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    n_real = (len(real[cond.real][0]) + NUM_CLASSES * cond.held_out_per_class) if cond.real else 0
    what = {"steps": budget.steps, "batch": budget.batch, "real": n_real, "generated": len(x) - n_real,
            "gen": str(cond.gen or ""), "gen_checkpoint": generator.get("checkpoint", ""),
            "test": len(test[0])}  # fmt: skip
    if generator:  # the generator's weights, not only its checkpoint's name (a run trained again reuses the name)
        what["gen_sha256"] = generator.get("checkpoint_sha256")
    if cond.held_out_per_class:
        what["held_out"] = cond.held_out_per_class
    results = []
    for seed in range(budget.seeds):
        path = folder / f"{cond.key}-seed{seed}.json"
        if path.is_file() and json.loads(path.read_text())["what"] == what:
            results.append(json.loads(path.read_text()))
            continue
        start = time.perf_counter()
        model = train_classifier(x, y, budget.steps, budget.batch, seed)
        result = {"what": what, "seed": seed, "accuracy": accuracy(model, *test),
                  "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        path.write_text(json.dumps(result, indent=2) + "\n")
        log(f"{cond.label}, seed {seed}: test accuracy {result['accuracy']:.4f} ({result['seconds']:.0f} s)")
        results.append(result)
    accs = np.array([r["accuracy"] for r in results])
    return {
        **asdict(cond),
        "gen": str(cond.gen or ""),
        "real_images": n_real,
        "generated_images": len(x) - n_real,
        "accuracies": accs.tolist(),
        "mean": float(accs.mean()),
        "sd": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
        "classifier_seconds": round(sum(r["seconds"] for r in results), 1),
    }


# ----------------------------------------------------------------------------------------------
# 5. table


def goals(rows: list[dict]) -> dict:
    """CAS / real accuracy (goal >= 0.85) and the best gain of a 10% mix over 10% real (goal >= 1 point and
    more than twice the larger standard deviation)."""
    by_key = {r["key"]: r for r in rows}
    out = {}
    if "real-100%" in by_key and "cas" in by_key:
        ratio = by_key["cas"]["mean"] / by_key["real-100%"]["mean"]
        out["cas"] = {"ratio": round(ratio, 4), "goal": 0.85, "held": ratio >= 0.85}
    base = by_key.get("real-10%")
    mixes = [r for r in rows if r["group"] == "10%" and r["generated_images"] and not r["full_gan"]]
    if base and mixes:
        best = max(mixes, key=lambda r: r["mean"])
        gain = 100 * (best["mean"] - base["mean"])
        noise = 2 * 100 * max(best["sd"], base["sd"])
        out["mix_10%"] = {"best": best["label"], "gain_points": round(gain, 2), "twice_sd_points": round(noise, 2),
                          "held": gain >= 1.0 and gain > noise}  # fmt: skip
    for name, bound in (("held_out_10%", "held_out_per_class"), ("full_mix_10%", "full_gan")):
        bounds = [r for r in rows if r["group"] == "10%" and r[bound]]
        if base and bounds:
            best = max(bounds, key=lambda r: r["mean"])
            out[name] = {"best": best["label"], "gain_points": round(100 * (best["mean"] - base["mean"]), 2)}
    return out


def table(rows: list[dict], budget: Budget, test_images: int, gan_note: str) -> str:
    seeds = f"{budget.seeds} classifier seed{'s' if budget.seeds > 1 else ''}"
    lines = [
        f"Fashion-MNIST 32 px: test accuracy (%) on {test_images:,} real test images, mean ± sd over {seeds}; "
        f"classifier {budget.steps} steps of batch {budget.batch} whatever the set; {gan_note}",
        "",
        "| training set | real | generated | generated by | accuracy (%) |",
        "|---|---:|---:|---|---:|",
    ]
    for r in rows:
        acc = f"{100 * r['mean']:.2f} ± {100 * r['sd']:.2f}"
        lines.append(f"| {r['label']} | {r['real_images']:,} | {r['generated_images']:,} | {r['gan'] or '-'} | {acc} |")
    return "\n".join(lines)


def goal_lines(result: dict) -> list[str]:
    lines = []
    if "cas" in result:
        c = result["cas"]
        lines.append(
            f"- CAS / real-data accuracy = {c['ratio']:.3f} (goal >= 0.85): {'held' if c['held'] else 'not held'}"
        )
    if "mix_10%" in result:
        m = result["mix_10%"]
        lines.append(
            f"- 10% real + generated vs 10% real only: {m['gain_points']:+.2f} points ({m['best']}; "
            f"twice the larger sd {m['twice_sd_points']:.2f}; goal >= 1 point and > 2 sd): "
            f"{'held' if m['held'] else 'not held'}"
        )
    if "held_out_10%" in result:
        h = result["held_out_10%"]
        lines.append(
            f"- 10% real + held-out real vs 10% real only: {h['gain_points']:+.2f} points ({h['best']}): what a "
            "generator as good as the data could add with this classifier and budget"
        )
    if "full_mix_10%" in result:
        f = result["full_mix_10%"]
        lines.append(
            f"- 10% real + the full-data GAN's images vs 10% real only: {f['gain_points']:+.2f} points ({f['best']}): "
            "what this recipe's GAN could add if it learned from ten times the data"
        )
    return lines


# ----------------------------------------------------------------------------------------------


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"augmentation: {option} {text!r} is not a comma list of numbers, e.g. 1,3,9") from None
    if any(not v > 0 for v in values):
        raise SystemExit(f"augmentation: {option} {text!r}: every value must be > 0")
    return values


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--small", action="store_true", help="a few hundred images, one seed, tiny budgets (a smoke run)")
    p.add_argument("--work", default=None, help="cache of every step (default runs/augmentation, or -small)")
    p.add_argument("--gan-config", default=str(ROOT / "configs" / "fashion_mnist_best.yaml"), help="GAN recipe")
    p.add_argument(
        "--kimg", type=float, default=None, help=f"GAN budget, kimg shown to D ({FULL.kimg:g}; small {SMALL.kimg:g})"
    )
    p.add_argument("--full-run", default=None, help="a trained class-conditional run on the 60,000 to use for CAS")
    p.add_argument(
        "--low-data", default="diffaugment", help=f"comma list of low-data GAN variants: {', '.join(LOW_DATA)}"
    )
    p.add_argument("--ratios", default="1,4", help="generated images per real one in the mixes")
    p.add_argument("--cas-truncation", default="", help="also CAS at these truncation psi, e.g. 1,2")
    p.add_argument("--mix-truncation", default="", help="also the subset mixes at these truncation psi, e.g. 1")
    p.add_argument(
        "--full-mix", action="store_true", help="also each subset plus the full-data GAN's images (a bound, not a goal)"
    )
    p.add_argument("--seeds", type=int, default=None, help=f"classifier seeds ({FULL.seeds}; small {SMALL.seeds})")
    p.add_argument(
        "--steps", type=int, default=None, help=f"classifier optimizer steps ({FULL.steps}; small {SMALL.steps})"
    )
    p.add_argument("extra", nargs="*", metavar="key=value", help="overrides for every GAN run")
    a = p.parse_args()
    budget = SMALL if a.small else FULL
    changes = {k: v for k, v in (("kimg", a.kimg), ("seeds", a.seeds), ("steps", a.steps)) if v is not None}
    budget = Budget(**{**asdict(budget), **changes})
    if budget.seeds < 1 or budget.steps < 1 or budget.kimg <= 0:
        raise SystemExit("augmentation: --seeds and --steps must be >= 1 and --kimg > 0")
    variants = [v.strip() for v in a.low_data.split(",") if v.strip()]
    unknown = [v for v in variants if v not in LOW_DATA]
    if unknown or not variants:
        raise SystemExit(f"augmentation: --low-data {a.low_data!r}: choose from {', '.join(LOW_DATA)}")
    ratios = parse_floats(a.ratios, "--ratios")
    psis = parse_floats(a.cas_truncation, "--cas-truncation") if a.cas_truncation else []
    mix_psis = parse_floats(a.mix_truncation, "--mix-truncation") if a.mix_truncation else []
    config = Path(a.gan_config)
    if not config.is_file():
        raise SystemExit(f"augmentation: --gan-config {config} does not exist")
    work = Path(a.work or ROOT / "runs" / ("augmentation-small" if a.small else "augmentation"))
    work.mkdir(parents=True, exist_ok=True)
    cmd = Commands(work)
    gan_extra = [*(SMALL_GAN if a.small else FULL_GAN), *a.extra]
    start = time.perf_counter()

    folders = prepare_all(cmd, budget)
    sizes = subset_sizes(budget)
    test = load(folders["test"])
    real = {label: load(folders[label]) for label in sizes}
    log(f"real sets: {', '.join(f'{k} {len(v[0]):,}' for k, v in real.items())}; test {len(test[0]):,}")

    @functools.cache
    def full_gan() -> tuple[Path, str]:
        """The class-conditional GAN on the whole training set (--full-run or trained here) and its note."""
        if a.full_run:
            full_run = Path(a.full_run)
            if latest_checkpoint(full_run) is None:
                raise SystemExit(f"augmentation: --full-run {full_run} holds no complete checkpoint")
            return full_run, f"--full-run {shown(full_run)}"
        return train_gan(cmd, "full", config, folders["100%"], budget.kimg, gan_extra), "GAN on real 100%"

    def full_group() -> list[Condition]:
        conditions = [Condition("real-100%", "real 100%", "100%", group="100%")]
        full_run, note = full_gan()
        n = sizes["100%"]
        for psi in [None, *psis]:
            gen = generated(cmd, full_run, "full" if psi is None else f"full-psi{psi:g}", n, psi)
            key, label = (
                ("cas", "generated only (CAS)") if psi is None else (f"cas-psi{psi:g}", f"CAS, truncation {psi:g}")
            )
            conditions.append(Condition(key, label, "", gen, n, note, "100%"))
        return conditions

    def subset_group(label: str) -> list[Condition]:
        n = sizes[label]
        conditions = [Condition(f"real-{label}", f"real {label}", label, group=label)]
        for r in ratios:  # the bound: the same number of real images from outside the subset
            text = f"real {label} + held-out real 1:{r:g}"
            if round(r * n) <= sizes["100%"] - n:
                conditions.append(Condition(f"real-{label}+real-x{r:g}", text, label, group=label,
                                            held_out_per_class=round(r * n)))  # fmt: skip
            else:
                log(f"{text!r} left out: fewer than {r:g}x{n} real images of each class outside real {label}")
        for variant in variants:
            name = f"{n}pc-{variant}"
            run_dir = train_gan(cmd, name, config, folders[label], budget.kimg, [*LOW_DATA[variant], *gan_extra])
            note = f"GAN on real {label}, {variant}"
            for psi in [None, *mix_psis]:
                tag, shown_psi = ("", "") if psi is None else (f"-psi{psi:g}", f", truncation {psi:g}")
                gen = generated(cmd, run_dir, name + tag, math.ceil(max(ratios) * n), psi)
                for r in ratios:
                    key, text = f"real-{label}+{name}{tag}-x{r:g}", f"real {label} + generated 1:{r:g}{shown_psi}"
                    conditions.append(Condition(key, text, label, gen, round(r * n), note, label))
        if a.full_mix:  # the same ratios of the full-data GAN's images (its CAS set: class-balanced prefixes)
            full_run, note = full_gan()
            gen = generated(cmd, full_run, "full", sizes["100%"])
            for r in ratios:
                text = f"real {label} + full-data GAN's images 1:{r:g}"
                if round(r * n) <= sizes["100%"]:
                    conditions.append(Condition(f"real-{label}+full-x{r:g}", text, label, gen, round(r * n), note,
                                                label, full_gan=True))  # fmt: skip
                else:
                    log(f"{text!r} left out: the full-data GAN's set has {sizes['100%']} images of each class")
        return conditions

    # The 10% comparison first, the full set and CAS next, 1% last: a run cut short has the main result.
    rows_of = {}
    for group in ("10%", "100%", "1%"):
        conditions = full_group() if group == "100%" else subset_group(group)
        rows_of[group] = [measure(cmd, c, real, test, budget) for c in conditions]
    rows = [row for group in ("100%", "10%", "1%") for row in rows_of[group]]
    cmd.seconds["classifiers"] = round(sum(r["classifier_seconds"] for r in rows), 1)
    result = goals(rows)
    gan_note = f"GANs: {shown(config)}, {budget.kimg:g} kimg" + (f", {' '.join(a.extra)}" if a.extra else "")
    text = table(rows, budget, len(test[0]), gan_note)
    text += "\n\n" + "\n".join(goal_lines(result))
    text += "\n\nCommands, in this order:\n\n```\n" + "\n".join(cmd.lines) + "\n```\n\n"
    text += "Wall times (s): " + ", ".join(f"{k} {v:g}" for k, v in cmd.seconds.items())
    text += f"; this invocation {time.perf_counter() - start:.0f}"
    print(text, flush=True)
    stem = "augmentation-small" if a.small else "augmentation"
    (work / f"{stem}.md").write_text(text + "\n")
    payload = {"budget": asdict(budget), "gan_config": str(config), "rows": rows, "goals": result,
               "commands": cmd.lines, "seconds": cmd.seconds}  # fmt: skip
    (work / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    log(f"table written to {work / stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
