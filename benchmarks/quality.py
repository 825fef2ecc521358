#!/usr/bin/env python3
"""Sample quality per kimg on Fashion-MNIST 32 px: the seed recipe (gandist and a hand-written loop) vs the best recipe.

    .venv/bin/python benchmarks/quality.py --kimg 200                  # everything, ~1-2 h per 100 kimg on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --kimg 50 --recipes seed,best
    .venv/bin/python benchmarks/quality.py --kimg 50 --recipes best --best-config my.yaml

Steps (each cached under --work, default runs/quality/, and reused when present):

 1. data: the Fashion-MNIST IDX files (--idx, default /usr/share/datasets/fashion-mnist) resized to
    32 px and written as WebDataset shards with labels: train (60,000 images) and test (10,000).
 2. feature network: a small CNN classifier trained once on the train split (test accuracy must
    reach 90%), exported (torch.export) as the map from images in [-1, 1] to its 128 penultimate
    activations: the feature space of the distances below (Inception does not know clothes).
 3. runs at the same budget of --kimg thousand real images shown to D, each measured against the
    10,000 test images (reference statistics cached next to the test shards) with --num-fake fakes:
      seed    gandist, configs/fashion_mnist.yaml (DCGAN, non-saturating loss, G_ema)
      plain   benchmarks/reference/plain_gan.py's DCGAN G and D driven by its own D/G step code on the same
              images (that script has no data path; its steps are copied here verbatim, real batches added)
      best    gandist, --best-config (configs/fashion_mnist_best.yaml)
    gandist runs are measured on G_ema and on G; the plain loop has no G_ema.
 4. a table (Markdown and JSON) in --work: FD, KID, precision, recall, training speed; and the
    ratio FD(best) / FD(seed, G_ema). The goal is <= 1/3. With --every K, every run also measures
    itself every K kimg during training (2,000 fakes: noisier, for the FD-vs-kimg curves).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gandist.data.prepare import iter_idx  # noqa: E402
from gandist.data.shards import write_shards  # noqa: E402
from gandist.metrics import Evaluator  # noqa: E402
from gandist.metrics.evaluate import evaluate  # noqa: E402

CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def log(text: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {text}", flush=True)


# ----------------------------------------------------------------------------------------------
# 1. data


def idx_paths(idx_dir: Path, split: str) -> tuple[Path, Path]:
    prefix = "train" if split == "train" else "t10k"
    images, labels = idx_dir / f"{prefix}-images-idx3-ubyte.gz", idx_dir / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise SystemExit(f"quality: {path} is missing: point --idx at the Fashion-MNIST IDX files")
    return images, labels


def prepare(idx_dir: Path, work: Path) -> dict[str, str]:
    """Shards of both splits at 32 px (written once); returns brace patterns."""
    specs = {}
    for split, count in (("train", 60_000), ("test", 10_000)):
        out = work / "data" / split
        shard_size = 10_000
        n_shards = count // shard_size
        specs[split] = str(out / f"fashion-mnist-{split}-{{000000..{n_shards - 1:06d}}}.tar")
        if (out / "index.json").is_file():
            continue
        log(f"writing {split} shards to {out}")
        images, labels = idx_paths(idx_dir, split)
        meta = {"resolution": 32, "channels": 1, "num_classes": 10, "classes": CLASSES, "split": split}
        write_shards(iter_idx(images, labels, 32), out, f"fashion-mnist-{split}", shard_size=shard_size, meta=meta)
    return specs


def load_arrays(idx_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 1 x 32 x 32 images and int64 labels, resized exactly as in the shards."""
    pairs = list(iter_idx(*idx_paths(idx_dir, split), 32))
    images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    labels = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
    return images, labels


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# 2. feature network


class Classifier(nn.Module):
    """Three conv stages (16, 32, 64 channels, each halving the size) and a 128-wide hidden layer."""

    def __init__(self):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(1, 16), stage(16, 32), stage(32, 64), nn.Flatten(), nn.Linear(64 * 16, 128))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FeatureOnly(nn.Module):
    def __init__(self, classifier: Classifier):
        super().__init__()
        self.body = classifier.body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def feature_net(idx_dir: Path, work: Path, epochs: int) -> Path:
    """Train the classifier once; export its feature map as work/classifier/features.pt2."""
    folder = work / "classifier"
    path, info_path = folder / "features.pt2", folder / "info.json"
    if path.is_file() and info_path.is_file():
        log(f"feature network: {path} ({json.loads(info_path.read_text())['test_accuracy']:.4f} test accuracy)")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = load_arrays(idx_dir, "train")
    test_x, test_y = load_arrays(idx_dir, "test")
    torch.manual_seed(0)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    steps = epochs * (len(train_x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for i in range(len(train_x) // 128):
            batch = order[i * 128 : (i + 1) * 128]
            x = to_float(train_x[batch])
            x = torch.where(torch.rand(len(batch), 1, 1, 1) < 0.5, x.flip(3), x)
            loss = F.cross_entropy(model(x), train_y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        accuracy = classifier_accuracy(model, test_x, test_y)
        log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {accuracy:.4f}")
    if accuracy < 0.90:
        raise SystemExit(f"quality: the classifier reached only {accuracy:.4f} test accuracy (< 0.90): more --epochs")
    module = FeatureOnly(model).eval()
    program = torch.export.export(
        module, (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    info = {"test_accuracy": accuracy, "epochs": epochs, "train_seconds": round(time.perf_counter() - start, 1)}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path


@torch.no_grad()
def classifier_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(to_float(x[i : i + 1000])).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000)
    )
    return correct / len(x)


# ----------------------------------------------------------------------------------------------
# 3. runs


def metrics_overrides(net: Path, test: str, num_fake: int) -> list[str]:
    return [f"metrics.feature_net={net}", f"metrics.reference={test}", f"metrics.num_fake={num_fake}"]


def gandist_run(name: str, config: Path, train: str, kimg: float, work: Path, extra: list[str]) -> tuple[Path, dict]:
    """Train with gandist in a subprocess unless the run has reached `kimg` (a shorter run is continued)."""
    run_dir = work / "runs" / name
    summary_path = run_dir / "summary.json"
    if not (summary_path.is_file() and json.loads(summary_path.read_text())["kimg"] >= kimg):
        cmd = [sys.executable, "-m", "gandist.train", "--config", str(config), f"data.shards={train}",
               f"train.kimg={kimg}", f"output_dir={work / 'runs'}", f"run_name={name}", *extra]  # fmt: skip
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    seconds = sum(s["sec_per_kimg"] * (s["kimg"] - prev["kimg"]) for prev, s in zip([{"kimg": 0}] + stats, stats))
    return run_dir, {"train_seconds": round(seconds, 1), "images_per_s": round(kimg * 1000 / max(seconds, 1e-9), 1)}


def _plain_gan_module():
    path = ROOT / "benchmarks" / "reference" / "plain_gan.py"
    if not path.is_file():
        raise SystemExit(f"quality: {path} not found (the speed reference loop); skip it with --recipes seed,best")
    spec = importlib.util.spec_from_file_location("plain_gan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PlainGenerator(nn.Module):
    """plain_gan.py's generator behind gandist's G(z, c) interface, for the metrics."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(z[:, :, None, None])


def plain_run(idx_dir: Path, kimg: float, work: Path, batch: int, every: float = 0, measure=None) -> tuple[Path, dict]:
    """plain_gan.py's DCGAN (nc=1, width 64, nz=100) and its exact step code, fed real Fashion-MNIST batches.

    With `every` > 0, `measure(G)` is called every that many kimg (its time is not counted as training).
    """
    path = work / "runs" / "plain" / "G.pt"
    info_path, state_path = path.with_name("info.json"), path.with_name("state.pt")
    done = json.loads(info_path.read_text()) if info_path.is_file() else {"kimg": 0, "train_seconds": 0.0, "curve": []}
    if path.is_file() and done["kimg"] >= kimg:
        return path, done
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = _plain_gan_module()
    images, _ = load_arrays(idx_dir, "train")
    torch.manual_seed(0)
    dev = torch.device("cpu")
    G, D = plain.generator(32, nc=1).to(dev), plain.discriminator(32, nc=1).to(dev)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))

    def d_step(real):  # plain_gan.py's d_step (fp32: its autocast and scaler are no-ops)
        z = torch.randn(batch, 100, 1, 1, device=dev)
        with torch.no_grad():
            fake = G(z)
        loss = F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        return loss.detach()

    def g_step():  # plain_gan.py's g_step
        z = torch.randn(batch, 100, 1, 1, device=dev)
        D.requires_grad_(False)
        loss = F.softplus(-D(G(z))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        D.requires_grad_(True)
        return loss.detach()

    steps = int(kimg * 1000) // batch
    order, pos, first = torch.randperm(len(images)), 0, 0
    if state_path.is_file():  # continue a shorter run of this loop (as gandist runs continue theirs)
        state = torch.load(state_path, weights_only=False)
        for module, key in ((G, "G"), (D, "D"), (opt_g, "opt_g"), (opt_d, "opt_d")):
            module.load_state_dict(state[key])
        order, pos, first = state["order"], state["pos"], state["step"]
        torch.set_rng_state(state["rng"])
    log(f"plain loop: steps {first}..{steps} of batch {batch}")
    start, paused, curve = time.perf_counter(), 0.0, done["curve"]
    next_measure = (first * batch // (every * 1000) + 1) * every * 1000 if every > 0 else float("inf")
    for step in range(first, steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(images)), 0
        real = to_float(images[order[pos : pos + batch]])
        pos += batch
        ld, lg = d_step(real), g_step()
        if (step + 1) % 200 == 0:
            log(f"plain loop: {(step + 1) * batch / 1000:.1f} kimg, loss D {ld.item():.3f} G {lg.item():.3f}")
        nimg = (step + 1) * batch
        if nimg >= next_measure or (step == steps - 1 and every > 0):
            t0 = time.perf_counter()
            curve.append({"kimg": round(nimg / 1000, 3), **measure(PlainGenerator(G))})
            G.train()
            paused += time.perf_counter() - t0
            while next_measure <= nimg:
                next_measure += every * 1000
    seconds = time.perf_counter() - start - paused + done["train_seconds"]
    torch.save(G.state_dict(), path)
    state = {"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}
    torch.save({**state, "order": order, "pos": pos, "step": steps, "rng": torch.get_rng_state()}, state_path)
    info = {
        "kimg": steps * batch / 1000,
        "train_seconds": round(seconds, 1),
        "images_per_s": round(steps * batch / seconds, 1),
        "curve": curve,
    }
    info_path.write_text(json.dumps(info) + "\n")
    return path, info


def plain_evaluator(net: Path, test: str, num_fake: int, kid_subsets: int = 100) -> Evaluator:
    from gandist.config import MetricsConfig, StrategyConfig
    from gandist.metrics.reference import ReferenceSpec
    from gandist.strategy import Strategy, make_accelerator

    cfg = MetricsConfig(feature_net=str(net), reference=test, num_fake=num_fake, kid_subsets=kid_subsets)
    single = Strategy(make_accelerator(StrategyConfig()), "fp32")
    return Evaluator(cfg, ReferenceSpec.of(cfg, test, 32, 1), single, say=log)


def measure_plain(G_path: Path, net: Path, test: str, num_fake: int, seed: int = 0) -> dict:
    plain = _plain_gan_module()
    G = PlainGenerator(plain.generator(32, nc=1))
    G.net.load_state_dict(torch.load(G_path, weights_only=True))
    return plain_evaluator(net, test, num_fake)(G.eval(), z_dim=100, seed=seed)


# ----------------------------------------------------------------------------------------------
# 4. table


def curve_table(curves: dict[str, list[dict]]) -> str:
    """FD by kimg for each run that measured itself during training."""
    points = sorted({c["kimg"] for curve in curves.values() for c in curve})
    lines = ["| run | " + " | ".join(f"{k:g}" for k in points) + " |", "|---|" + "---|" * len(points)]
    for name, curve in curves.items():
        by_kimg = {c["kimg"]: next(v for k, v in c.items() if k.startswith("metrics/fid_")) for c in curve}
        lines.append(f"| {name} | " + " | ".join(f"{by_kimg[k]:.0f}" if k in by_kimg else "" for k in points) + " |")
    return "\n".join(lines)


def table(rows: list[dict], kimg: float) -> str:
    lines = [
        f"Fashion-MNIST 32 px, {kimg:g} kimg, FD/KID/precision/recall in the classifier's feature space "
        f"(10k test images vs {rows[0]['num_fake']} fakes)",
        "",
        "| recipe | net | FD | KID | precision | recall | img/s (train) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['net']} | {r['fd']:.3f} | {r['kid']:.1f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kimg", type=float, default=200, help="budget of every run: thousands of real images shown to D")
    p.add_argument("--recipes", default="seed,plain,best", help="comma list of seed, plain, best")
    p.add_argument("--best-config", default=str(ROOT / "configs" / "fashion_mnist_best.yaml"))
    p.add_argument("--seed-config", default=str(ROOT / "configs" / "fashion_mnist.yaml"))
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"), help="cache of data, classifier, runs, tables")
    p.add_argument("--idx", default="/usr/share/datasets/fashion-mnist", help="folder of the IDX .gz files")
    p.add_argument("--num-fake", type=int, default=10_000, help="generated images per measurement")
    p.add_argument("--epochs", type=int, default=4, help="classifier training epochs")
    p.add_argument("--tag", default="", help="suffix of the best recipe's run name (to keep variants apart)")
    p.add_argument("--every", type=float, default=0, help="also measure each run every this many kimg (2k fakes)")
    p.add_argument("extra", nargs="*", metavar="key=value", help="overrides for the best recipe's gandist run")
    a = p.parse_args()
    work, idx_dir = Path(a.work), Path(a.idx)
    specs = prepare(idx_dir, work)
    net = feature_net(idx_dir, work, a.epochs)
    metrics = metrics_overrides(net, specs["test"], a.num_fake)
    rows, curves = [], {}
    tag = f"-{a.tag}" if a.tag else ""
    during = []
    if a.every > 0:
        during = [
            *metrics_overrides(net, specs["test"], 2000),
            f"metrics.interval_kimg={a.every}",
            "metrics.kid_subsets=20",
        ]
    for recipe in [r.strip() for r in a.recipes.split(",") if r.strip()]:
        if recipe == "plain":
            measure = lambda G: plain_evaluator(net, specs["test"], 2000, 20)(G.eval(), z_dim=100)  # noqa: E731
            G_path, info = plain_run(idx_dir, a.kimg, work, 64, a.every, measure)
            result = measure_plain(G_path, net, specs["test"], a.num_fake)
            curves["seed, plain_gan.py loop (G)"] = info.pop("curve", [])
            rows.append({"recipe": "seed, plain_gan.py loop", "net": "G", **_row(result, info, a.num_fake)})
            continue
        if recipe not in ("seed", "best"):
            raise SystemExit(f"quality: unknown recipe {recipe!r} (seed, plain, best)")
        config = Path(a.seed_config if recipe == "seed" else a.best_config)
        extra = a.extra if recipe == "best" else []
        name = f"{recipe}{tag if recipe == 'best' else ''}"  # a larger --kimg continues the run
        run_dir, info = gandist_run(name, config, specs["train"], a.kimg, work, [*extra, *during])
        if (run_dir / "metrics.jsonl").is_file():
            lines = (run_dir / "metrics.jsonl").read_text().splitlines()
            curves[f"{recipe}, gandist (G_ema)"] = [json.loads(line) for line in lines]
        label = f"{recipe}, gandist ({config.name}{' ' + ' '.join(extra) if extra else ''})"
        for which in ("G_ema", "G"):
            result = evaluate(run_dir, metrics, net=which)
            rows.append({"recipe": label, "net": which, **_row(result, info, a.num_fake)})
    if not rows:
        log(f"data in {work / 'data'}, feature network {net}; no recipe to run")
        return 0
    text = table(rows, a.kimg)
    seed_fd = next((r["fd"] for r in rows if r["recipe"].startswith("seed, gandist") and r["net"] == "G_ema"), None)
    best_fd = next((r["fd"] for r in rows if r["recipe"].startswith("best") and r["net"] == "G_ema"), None)
    if seed_fd and best_fd:
        text += f"\n\nFD(best, G_ema) / FD(seed, G_ema) = {best_fd / seed_fd:.3f} (goal <= 0.333)"
    if any(curves.values()):
        text += "\n\nFD by kimg, measured during training (2,000 fakes):\n\n" + curve_table(curves)
    print(text)
    stem = f"quality-{a.kimg:g}kimg{tag}"
    (work / f"{stem}.md").write_text(text + "\n")
    (work / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    log(f"table written to {work / stem}.md")
    return 0


def _row(result: dict, info: dict, num_fake: int) -> dict:
    get = lambda kind: next(v for k, v in result.items() if k.startswith(f"metrics/{kind}_"))
    return {
        "fd": get("fid"),
        "kid": get("kid"),
        "precision": get("precision"),
        "recall": get("recall"),
        "num_fake": num_fake,
        **info,
    }


if __name__ == "__main__":
    sys.exit(main())
