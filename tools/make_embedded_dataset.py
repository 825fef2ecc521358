"""Rebuild the embedded default dataset `gandist/assets/fashion_mnist/` from Debian's Fashion-MNIST.

    apt-get install dataset-fashion-mnist
    python tools/make_embedded_dataset.py [--per-class 600]

Takes the first `per-class` training images of each class (Fashion-MNIST, MIT licence) in a seeded
random order and encodes them with the code of `gandist prepare fashion-mnist` (32 px grey PNG, Lanczos,
labels), as gzip-compressed shards: the samples are byte-identical to what that command writes for
the same images. Shards are byte-reproducible (tar and gzip headers carry no time).
"""

import argparse
from pathlib import Path

import numpy as np

from gandist.data.prepare import FASHION_MNIST_CLASSES, EncodeOptions, IdxSource, idx_files, prepare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "gandist/assets/fashion_mnist"))
    p.add_argument("--per-class", type=int, default=600)
    p.add_argument("--shard-size", type=int, default=1000)
    a = p.parse_args()
    source = IdxSource(*idx_files(Path(a.src), "train"), classes=FASHION_MNIST_CLASSES, name="fashion-mnist")
    labels = source.arrays()[1]
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[: a.per_class] for c in range(10)]))
    keep = np.random.default_rng(0).permutation(keep)  # mixed classes in every shard
    index = prepare(
        source,
        a.out,
        EncodeOptions(resolution=32, channels=1, fmt="png"),
        shard_size=a.shard_size,
        compress=True,
        items=[int(i) for i in keep],
        overwrite=True,
        meta={"source": "Fashion-MNIST train split (MIT licence)"},
    )
    print(f"wrote {index['num_samples']} images in {len(index['shards'])} shards to {a.out}")


if __name__ == "__main__":
    main()
