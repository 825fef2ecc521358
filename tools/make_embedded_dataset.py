"""Rebuild the embedded default dataset `gandist/assets/fashion_mnist/` from Debian's Fashion-MNIST.

    apt-get install dataset-fashion-mnist
    python tools/make_embedded_dataset.py [--per-class 600]

Takes the first `per-class` training images of each class (Fashion-MNIST, MIT licence), resizes
them to 32 px and writes gzip-compressed PNG shards with labels.
"""

import argparse
from pathlib import Path

import numpy as np

from gandist.shards import read_idx, resize, write_shards

CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "gandist/assets/fashion_mnist"))
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--shard-size", type=int, default=1000)
    a = p.parse_args()
    images = read_idx(Path(a.src) / "train-images-idx3-ubyte.gz")
    labels = read_idx(Path(a.src) / "train-labels-idx1-ubyte.gz")
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[: a.per_class] for c in range(10)]))
    rng = np.random.default_rng(0)
    keep = rng.permutation(keep)  # mixed classes in every shard
    samples = ((resize(images[i], 32), int(labels[i])) for i in keep)
    meta = {
        "resolution": 32,
        "channels": 1,
        "num_classes": 10,
        "classes": CLASSES,
        "source": "Fashion-MNIST train split (MIT licence)",
    }
    paths = write_shards(samples, a.out, "fashion-mnist", shard_size=a.shard_size, fmt="png", compress=True, meta=meta)
    print(f"wrote {len(keep)} images in {len(paths)} shards to {a.out}")


if __name__ == "__main__":
    main()
