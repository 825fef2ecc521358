#!/usr/bin/env python3
"""Sample quality per kimg on Fashion-MNIST 32 px: the seed recipe (gandist and a hand-written loop), the previous
best recipe (best v1) and the best recipe, against the real data's own scores.

    .venv/bin/python benchmarks/quality.py --kimg 60 --every 10        # everything, with curves
    .venv/bin/python benchmarks/quality.py --kimg 50 --recipes seed,best
    .venv/bin/python benchmarks/quality.py --kimg 20 --recipes best --tag try1 --best-config my.yaml train.lr=...

Steps (each cached under --work, default runs/quality/, and reused when present):

 1. data: the Fashion-MNIST IDX files (--idx, default /usr/share/datasets/fashion-mnist) resized to
    32 px and written as WebDataset shards with labels: train (60,000 images) and test (10,000).
 2. classifier: a small CNN trained once on the train split (test accuracy must reach 90%),
    exported (torch.export) twice: as the map from images in [-1, 1] to its 128 penultimate
    activations (features.pt2: the feature space of the distances below; Inception does not know
    clothes) and to its 10 logits (logits.pt2: class fidelity).
 3. runs at the same budget of --kimg thousand real images shown to D:
      seed     gandist, configs/fashion_mnist.yaml (DCGAN, non-saturating loss, G_ema)
      plain    benchmarks/reference/plain_gan.py's DCGAN G and D driven by its own D/G step code on the same
               images (that script has no data path; its steps are copied here verbatim, real batches added)
      best_v1  gandist, --best-v1-config (configs/fashion_mnist_best_v1.yaml: the best recipe before issue 18)
      best     gandist, --best-config (configs/fashion_mnist_best.yaml); --tag and key=value overrides apply to it
    a run that reached --kimg is reused, a shorter one continued; one trained with another recipe (its config.yaml:
    the config file changed since, other overrides) stops the script, naming the key: move it aside or use --tag
 4. the protocol (class Protocol), the same for every row: --num-fake images (class-balanced for a
    conditional G, quantised to 8 bits, fixed noise) against the 10,000 test images: FD, KID,
    precision and recall (k=3), density and coverage (k=5) in the feature space; per class, the
    classifier's accuracy on the samples asked to be that class divided by its accuracy on test
    images of the class (fidelity: min and mean over classes) and the per-class recall. The first
    row is the real data itself: --num-fake random training images measured as if generated.
    gandist runs are measured on G_ema and on G (--no-g: G_ema only); the plain loop has no G_ema.
    With --every K, gandist runs keep a checkpoint every K kimg and each is measured the same way
    afterwards (the plain loop measures itself every K kimg): the curves of FD, recall, coverage
    and fidelity by kimg. Measurements are cached in each run folder (quality-measures.json).
 5. tables (Markdown and JSON) in --work: the rows, per-class accuracy and recall, whether issue
    18's goals hold for the best recipe (recall and coverage within 0.25 of the real data's, FD at
    most half of best v1's, every class's fidelity >= 0.8), and the curves.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.children import run_child  # noqa: E402
from benchmarks.runs import train_seconds, trained_kimg  # noqa: E402
from gandist.data.prepare import iter_idx  # noqa: E402
from gandist.data.shards import write_shards  # noqa: E402
from gandist.generator.load import load_trained  # noqa: E402
from gandist.metrics import feature_stats  # noqa: E402
from gandist.metrics.evaluator import distribution_scores, quantize  # noqa: E402
from gandist.metrics.features import load_feature_net  # noqa: E402
from gandist.metrics.fidelity import (  # noqa: E402
    class_balanced_samples,
    class_fidelity,
    per_class_accuracy,
    per_class_recall,
    predict,
)
from gandist.training.ema import refresh_batchnorm_stats  # noqa: E402

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


def export(module: nn.Module, path: Path) -> None:
    """torch.export a module of N x 1 x 32 x 32 images with a dynamic batch dimension."""
    program = torch.export.export(
        module.eval(), (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))


def feature_net(idx_dir: Path, work: Path, epochs: int) -> tuple[Path, Path]:
    """Train the classifier once; export its feature map (work/classifier/features.pt2) and its logits
    (logits.pt2, for class fidelity). Returns both paths."""
    folder = work / "classifier"
    path, logits_path, info_path = folder / "features.pt2", folder / "logits.pt2", folder / "info.json"
    if path.is_file() and logits_path.is_file() and info_path.is_file():
        log(f"feature network: {path} ({json.loads(info_path.read_text())['test_accuracy']:.4f} test accuracy)")
        return path, logits_path
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
    export(FeatureOnly(model), path)
    export(model, logits_path)
    info = {"test_accuracy": accuracy, "epochs": epochs, "train_seconds": round(time.perf_counter() - start, 1)}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    return path, logits_path


@torch.no_grad()
def classifier_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(to_float(x[i : i + 1000])).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(x), 1000)
    )
    return correct / len(x)


# ----------------------------------------------------------------------------------------------
# 3. runs


def gandist_run(name: str, config: Path, train: str, kimg: float, work: Path, extra: list[str]) -> tuple[Path, dict]:
    """Train with gandist in a subprocess unless the run has reached `kimg` (a shorter run is continued)."""
    run_dir = work / "runs" / name
    overrides = [f"data.shards={train}", f"train.kimg={kimg}", f"output_dir={work / 'runs'}", f"run_name={name}"]
    overrides += extra
    if trained_kimg(run_dir, config, overrides, "quality") < kimg:  # stops if the run had another recipe
        cmd = [sys.executable, "-m", "gandist.train", "--config", str(config), *overrides]
        log(" ".join(cmd))
        status = run_child(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if status != 0:
            raise SystemExit(f"quality: training {name} exited {status}: {' '.join(cmd)}")
    seconds = train_seconds(run_dir)
    return run_dir, {"train_seconds": seconds, "images_per_s": round(kimg * 1000 / max(seconds, 1e-9), 1)}


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
        state = torch.load(state_path, weights_only=True)
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


# ----------------------------------------------------------------------------------------------
# 3b. the measurement protocol


@torch.no_grad()
def embed(net, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Features (or logits) of images in [-1, 1], in batches."""
    return torch.cat([net(images[i : i + batch]) for i in range(0, len(images), batch)])


class Protocol:
    """Every generator and the real training images, measured the same way against the 10,000 test images.

    Generated images: num_fake of them, class-balanced for a conditional G (sample i asks for class
    i mod 10), quantised to 8 bits, noise from a fixed seed. In the classifier's feature space: FD,
    KID, precision and recall (k=3), density and coverage (k=5); with the classifier's logits: the
    per-class fidelity (accuracy on samples of class c / accuracy on test images of class c) and the
    per-class recall. The real-data row measures num_fake random training images the same way.
    """

    def __init__(self, idx_dir: Path, features: Path, logits: Path, num_fake: int, seed: int = 0):
        self.idx_dir, self.num_fake, self.seed = idx_dir, num_fake, seed
        self.features, self.logits = load_feature_net(str(features)), load_feature_net(str(logits))
        self.identity = f"{self.features.identity}/{self.logits.identity}/{num_fake}/{seed}"
        test_x, self.test_labels = load_arrays(idx_dir, "test")
        test = to_float(test_x)
        self.test_features = embed(self.features, test)
        self.test_predicted = predict(self.logits, test)
        self.mu, self.sigma = feature_stats(self.test_features)
        self.real_accuracy = per_class_accuracy(self.test_predicted, self.test_labels, len(CLASSES))

    def images(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        """Metrics of a set of images in [-1, 1] (labels: the classes they were asked to be, or None)."""
        start = time.perf_counter()
        fake = embed(self.features, images)
        out = distribution_scores(self.test_features, self.mu, self.sigma, fake, seed=self.seed)
        predicted = predict(self.logits, images)
        out["class_share"] = (torch.bincount(predicted, minlength=len(CLASSES)).double() / len(predicted)).tolist()
        if labels is not None:
            fidelity = class_fidelity(predicted, labels, self.test_predicted, self.test_labels, len(CLASSES))
            out.update(
                min_fidelity=fidelity.min_ratio,
                mean_fidelity=fidelity.mean_ratio,
                fidelity=fidelity.as_dict(),
                class_recall=per_class_recall(self.test_features, self.test_labels, fake, labels, len(CLASSES)),
            )
        out["measure_seconds"] = round(time.perf_counter() - start, 1)
        return out

    def generator(self, G: nn.Module, z_dim: int, num_classes: int) -> dict:
        """Metrics of num_fake samples of G (class-balanced when conditional)."""
        if num_classes:
            images, labels = class_balanced_samples(G, z_dim, num_classes, self.num_fake // num_classes, self.seed)
        else:
            z = torch.randn(self.num_fake, z_dim, generator=torch.Generator().manual_seed(self.seed))
            was_training = G.training
            G.eval()
            with torch.no_grad():
                images = torch.cat([quantize(G(z[i : i + 250])) for i in range(0, len(z), 250)])
            G.train(was_training)
            labels = None
        return self.images(images, labels)

    def real_baseline(self, cache_path: Path) -> dict:
        """num_fake random training images measured as if generated (labels: their own classes); cached."""
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        if self.identity not in cache:
            train_x, train_y = load_arrays(self.idx_dir, "train")
            subset = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(self.seed))[: self.num_fake]
            cache[self.identity] = self.images(to_float(train_x[subset]), train_y[subset])
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        return cache[self.identity]

    def checkpoint(self, ckpt: Path, net: str = "G_ema") -> dict:
        """Metrics of a gandist checkpoint's G_ema (BatchNorm statistics re-estimated, as evaluate does) or G,
        cached in the run folder's quality-measures.json."""
        cache_path = ckpt.parent.parent / "quality-measures.json"
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        key = f"{ckpt.name}/{net}/{self.identity}"
        if key not in cache:
            trained = load_trained(ckpt, net)
            cfg = trained.cfg
            if net == "G_ema":
                refresh_batchnorm_stats(
                    trained.G, cfg.model.z_dim, cfg.model.num_classes, trained.device, cfg.train.seed
                )
            result = self.generator(trained.G, cfg.model.z_dim, cfg.model.num_classes)
            cache[key] = {"kimg": round(trained.nimg / 1000, 3), "net": net, **result}
            cache_path.write_text(json.dumps(cache, indent=1) + "\n")
        return cache[key]


def checkpoints_of(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    from gandist.training.checkpoint import complete_checkpoints

    return complete_checkpoints(run_dir)


# ----------------------------------------------------------------------------------------------
# 4. table


CURVE_METRICS = (
    ("fd", "FD", ".2f"),
    ("recall", "recall", ".3f"),
    ("coverage", "coverage", ".3f"),
    ("min_fidelity", "min class fidelity", ".3f"),
    ("mean_fidelity", "mean class fidelity", ".3f"),
)


def _fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def curve_table(curves: dict[str, list[dict]], key: str, spec: str) -> str:
    """One metric by kimg (columns) for each run (rows) that was measured at several kimg; a checkpoint's kimg is
    rounded to 0.1 (batch 64 reaches 20 kimg at 20.032: one column with the runs that stop at 20)."""
    points = sorted({round(c["kimg"], 1) for curve in curves.values() for c in curve})
    lines = ["| run | " + " | ".join(f"{k:g}" for k in points) + " |", "|---|" + "---|" * len(points)]
    for name, curve in curves.items():
        by_kimg = {round(c["kimg"], 1): c.get(key) for c in curve}
        lines.append(f"| {name} | " + " | ".join(_fmt(by_kimg.get(k), spec) for k in points) + " |")
    return "\n".join(lines)


def table(rows: list[dict], kimg: float, num_fake: int) -> str:
    lines = [
        f"Fashion-MNIST 32 px, {kimg:g} kimg: {num_fake} images per row (class-balanced samples of a conditional G) "
        "against the 10,000 test images in the classifier's feature space: FD, KID, precision/recall (k=3), "
        "density/coverage (k=5); class fidelity = the classifier's accuracy on samples of a class / on test images "
        "of that class (min and mean over the classes)",
        "",
        "| recipe | net | FD | KID | precision | recall | density | coverage | fidelity min | fidelity mean "
        "| img/s (train) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['net']} | {r['fd']:.3f} | {r['kid']:.4f} | {r['precision']:.3f} | "
            f"{r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | {_fmt(r.get('min_fidelity'), '.3f')} | "
            f"{_fmt(r.get('mean_fidelity'), '.3f')} | {_fmt(r.get('images_per_s'), '.0f')} |"
        )
    return "\n".join(lines)


def class_table(rows: list[dict], real_accuracy: list[float]) -> str:
    """Per class: the classifier's accuracy on test images; for each row with classes, its accuracy on that
    row's images (fidelity ratio) and the per-class recall."""
    rows = [r for r in rows if "fidelity" in r]
    head = "| class | test accuracy | " + " | ".join(f"{r['recipe']} ({r['net']}): acc (ratio) / recall" for r in rows)
    lines = [head + " |", "|---|---|" + "---|" * len(rows)]
    for c, name in enumerate(CLASSES):
        cells = [
            f"{r['fidelity']['fake_accuracy'][c]:.3f} ({r['fidelity']['ratio'][c]:.2f}) / {r['class_recall'][c]:.3f}"
            for r in rows
        ]
        lines.append(f"| {name} | {real_accuracy[c]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(rows: list[dict], real: dict) -> str:
    """Issue 18's goals for the best recipe (G_ema), against the real data and best v1 (G_ema)."""
    new = next((r for r in rows if r["key"] == "best" and r["net"] == "G_ema"), None)
    old = next((r for r in rows if r["key"] == "best_v1" and r["net"] == "G_ema"), None)
    if new is None:
        return ""
    lines = ["Goals (best recipe, G_ema):", ""]

    def line(text: str, ok: bool) -> None:
        lines.append(f"- {text}: {'holds' if ok else 'NOT reached'}")

    for key in ("recall", "coverage"):
        bar = real[key] - 0.25
        line(f"{key} {new[key]:.3f} >= real data's {real[key]:.3f} - 0.25 = {bar:.3f}", new[key] >= bar)
    if old is not None:
        ratio = new["fd"] / old["fd"]
        line(f"FD {new['fd']:.3f} <= FD(best v1) / 2 = {old['fd'] / 2:.3f} (ratio {ratio:.3f})", ratio <= 0.5)
    worst = min(range(len(CLASSES)), key=lambda c: new["fidelity"]["ratio"][c])
    text = f"every class's fidelity >= 0.8: min ratio {new['min_fidelity']:.3f} ({CLASSES[worst]})"
    line(text, new["min_fidelity"] >= 0.8)
    return "\n".join(lines)


RECIPES = {
    "seed": "seed, gandist",
    "plain": "seed, plain_gan.py loop",
    "best_v1": "best v1",
    "best": "best",
}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kimg", type=float, default=200, help="budget of every run: thousands of real images shown to D")
    p.add_argument("--recipes", default="seed,plain,best_v1,best", help="comma list of " + ", ".join(RECIPES))
    p.add_argument("--best-config", default=str(ROOT / "configs" / "fashion_mnist_best.yaml"))
    p.add_argument("--best-v1-config", default=str(ROOT / "configs" / "fashion_mnist_best_v1.yaml"))
    p.add_argument("--seed-config", default=str(ROOT / "configs" / "fashion_mnist.yaml"))
    p.add_argument("--work", default=str(ROOT / "runs" / "quality"), help="cache of data, classifier, runs, tables")
    p.add_argument("--idx", default="/usr/share/datasets/fashion-mnist", help="folder of the IDX .gz files")
    p.add_argument("--num-fake", type=int, default=10_000, help="generated images per measurement")
    p.add_argument("--epochs", type=int, default=4, help="classifier training epochs")
    p.add_argument("--tag", default="", help="suffix of the best recipe's run name (to keep variants apart)")
    p.add_argument("--every", type=float, default=0, help="also measure each run every this many kimg (curves)")
    p.add_argument("--no-g", action="store_true", help="measure G_ema only at the end (gandist runs: not also G)")
    p.add_argument("extra", nargs="*", metavar="key=value", help="overrides for the best recipe's gandist run")
    a = p.parse_args()
    work, idx_dir = Path(a.work), Path(a.idx)
    specs = prepare(idx_dir, work)
    net, logits_net = feature_net(idx_dir, work, a.epochs)
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"quality: unknown recipe(s) {unknown} (known: {', '.join(RECIPES)})")
    if not recipes:
        log(f"data in {work / 'data'}, feature network {net}, classifier {logits_net}; no recipe to run")
        return 0
    protocol = Protocol(idx_dir, net, logits_net, a.num_fake)
    real = {"recipe": f"real data ({a.num_fake} training images)", "net": "-", "key": "real"}
    real.update(protocol.real_baseline(work / "real-baseline.json"))
    rows, curves = [real], {}
    tag = f"-{a.tag}" if a.tag else ""
    # curves: gandist runs keep a checkpoint every --every kimg, each measured afterwards with the full protocol
    during = [f"train.checkpoint_kimg={a.every:g}", "train.keep_checkpoints=100000"] if a.every > 0 else []
    for recipe in recipes:
        if recipe == "plain":
            measure = lambda G: protocol.generator(G.eval(), 100, 0)  # noqa: E731
            G_path, info = plain_run(idx_dir, a.kimg, work, 64, a.every, measure)
            curves[f"{RECIPES[recipe]} (G)"] = info.pop("curve", [])
            G = PlainGenerator(_plain_gan_module().generator(32, nc=1))
            G.net.load_state_dict(torch.load(G_path, weights_only=True))
            rows.append({"recipe": RECIPES[recipe], "key": recipe, "net": "G", **protocol.generator(G, 100, 0), **info})
            continue
        config = Path({"seed": a.seed_config, "best_v1": a.best_v1_config, "best": a.best_config}[recipe])
        extra = a.extra if recipe == "best" else []
        name = f"{recipe}{tag if recipe == 'best' else ''}"  # a larger --kimg continues the run
        run_dir, info = gandist_run(name, config, specs["train"], a.kimg, work, [*extra, *during])
        label = f"{RECIPES[recipe]} ({config.name}{' ' + ' '.join(extra) if extra else ''})"
        ckpts = checkpoints_of(run_dir)
        if len(ckpts) > 1:
            curves[f"{RECIPES[recipe]}{tag if recipe == 'best' else ''} (G_ema)"] = [
                protocol.checkpoint(c) for c in ckpts
            ]
        for which in ("G_ema",) if a.no_g else ("G_ema", "G"):
            rows.append({"recipe": label, "key": recipe, "net": which, **protocol.checkpoint(ckpts[-1], which), **info})
            log(f"{label} {which}: " + json.dumps({k: rows[-1].get(k) for k in ("kimg", "fd", "recall", "coverage")}))
    text = table(rows, a.kimg, a.num_fake)
    text += "\n\nPer class (the real data row: the classifier's accuracy on training images):\n\n"
    text += class_table(rows, protocol.real_accuracy)
    seed_fd = next((r["fd"] for r in rows if r["key"] == "seed" and r["net"] == "G_ema"), None)
    best_fd = next((r["fd"] for r in rows if r["key"] == "best" and r["net"] == "G_ema"), None)
    if seed_fd and best_fd:
        text += f"\n\nFD(best, G_ema) / FD(seed, G_ema) = {best_fd / seed_fd:.3f}"
    text += "\n\n" + goals(rows, real)
    if any(len(c) > 1 for c in curves.values()):
        text += f"\n\nCurves: every run measured every {a.every:g} kimg with the same protocol"
        for key, title, spec in CURVE_METRICS:
            text += f"\n\n{title} by kimg:\n\n" + curve_table(curves, key, spec)
    print(text)
    stem = f"quality-{a.kimg:g}kimg{tag}"
    (work / f"{stem}.md").write_text(text + "\n")
    (work / f"{stem}.json").write_text(json.dumps({"rows": rows, "curves": curves}, indent=1) + "\n")
    log(f"table written to {work / stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
