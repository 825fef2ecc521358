"""Turn images into WebDataset shards for training: `gandist prepare SRC OUT_DIR [options]`.

examples:
    gandist prepare fashion-mnist data/fmnist                      # Debian's dataset-fashion-mnist, 32 px PNG
    gandist prepare /data/faces data/faces64 --resolution 64 --format npy --num-workers 8
    gandist prepare images.npz data/arr --labels labels.npy
    gandist prepare 'old/shard-{000000..000099}.tar' data/new --format npy    # re-shard / re-encode
    gandist prepare fashion-mnist data/fmnist-10pc --per-class 600          # class-balanced 10% (seeded)

SRC is one of
  fashion-mnist          the IDX files of Debian's dataset-fashion-mnist (--split train|test)
  a folder of IDX files  MNIST layout: *-images-idx3-ubyte[.gz] (+ *-labels-idx1-ubyte[.gz])
  a folder of images     png/jpg/webp/bmp/gif/tiff/ppm/pgm/..., searched recursively; class = first sub-folder name
                         (when every image lies in a sub-folder)
  an .npy or .npz file   N x H x W (x C) uint8 (or floats in [0, 1]); labels from --labels or the .npz
  shards                 a .tar/.tar.gz, a brace pattern, a comma list or a folder with index.json

Images are center-cropped to a square (--crop none: squashed instead), resized with --resize
(area averaging suits strong down-sampling, Lanczos is the default) and encoded by --num-workers
processes; shards are written under temporary names and renamed when complete, and `index.json`
(sample count, resolution, channels, classes, format) is written last. Sources other than shards
are shuffled (--seed) so every shard mixes all classes; keys are the sample's position.
--per-class N keeps N images of every class, chosen at random with --seed (after --limit): the same
subset on every machine, and the subsets of one seed are nested (--per-class 60 lies within 600).
"""

from __future__ import annotations

import argparse
import re

from gandist.data.images import FORMATS, RESIZE_FILTERS

NAME = "prepare"


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)i?[bB]?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500000, 64M, 1G)")
    return int(float(match.group(1)) * 1024 ** " kmg".index(match.group(2).lower() or " "))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The prepare command's arguments."""
    parser.add_argument("src", metavar="SRC", help="fashion-mnist, a folder (images / IDX / shards), .npy/.npz, shards")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for NAME-000000.tar ... and index.json")
    parser.add_argument("--resolution", type=int, default=32, help="image side in pixels (default 32)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=int, default=None, help="samples per shard (default 2000)")
    size.add_argument("--shard-bytes", type=_size, default=None, help="bytes per shard, e.g. 64M")
    parser.add_argument("--format", choices=FORMATS, default="png", help="image encoding (npy: raw, fastest to read)")
    parser.add_argument("--num-workers", type=int, default=1, help="encoding processes (default 1)")
    parser.add_argument("--channels", choices=("auto", "1", "3"), default="auto", help="1 grey, 3 RGB; auto: source's")
    parser.add_argument("--resize", choices=tuple(RESIZE_FILTERS), default="lanczos", help="resampling filter")
    parser.add_argument("--crop", choices=("center", "none"), default="center", help="center square, or squash")
    parser.add_argument("--compress", action="store_true", help="gzip the shards (.tar.gz): smaller, slower to read")
    parser.add_argument("--name", default=None, help="shard name prefix (default: from the source)")
    parser.add_argument("--labels", default=None, help=".npy of integer labels for an .npy source")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="IDX split (default train)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of the source")
    parser.add_argument(
        "--per-class", type=int, default=0, metavar="N", help="a class-balanced subset: N images of each class (seeded)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    parser.add_argument("--no-shuffle", action="store_true", help="keep the source's order")
    parser.add_argument("--overwrite", action="store_true", help="replace shards of the same name in OUT_DIR")


def run(args: argparse.Namespace) -> int:
    """Run `gandist prepare` from parsed arguments; prints errors and returns the exit status."""
    from gandist.data.prepare import EncodeOptions, PrepareError, open_source, prepare

    for option, value in (("--resolution", args.resolution), ("--num-workers", args.num_workers)):
        if value < 1:
            raise PrepareError(f"{option} must be positive, got {value}")
    if args.per_class < 0:
        raise PrepareError(f"--per-class must be positive (images of each class), got {args.per_class}")
    if args.shard_size is not None and args.shard_size < 1:
        raise PrepareError(f"--shard-size must be positive, got {args.shard_size}")
    if args.shard_bytes is not None and args.shard_bytes < 1:
        raise PrepareError(f"--shard-bytes must be positive, got {args.shard_bytes}")
    source = open_source(args.src, args.split, args.labels)
    channels = int(args.channels) if args.channels != "auto" else (source.channels or 3)
    options = EncodeOptions(args.resolution, channels, args.format, args.resize, args.crop)
    index = prepare(
        source,
        args.out_dir,
        options,
        name=args.name,
        shard_size=args.shard_size or (0 if args.shard_bytes else 2000),
        shard_bytes=args.shard_bytes or 0,
        compress=args.compress,
        num_workers=args.num_workers,
        limit=args.limit,
        per_class=args.per_class,
        seed=args.seed,
        shuffle=not args.no_shuffle,
        overwrite=args.overwrite,
    )
    skipped = f", skipped {index['skipped']} unreadable" if index.get("skipped") else ""
    print(
        f"gandist prepare: {index['num_samples']} images ({index['resolution']} px, {index['channels']} channel(s), "
        f"{index['format']}{skipped}) in {len(index['shards'])} shard(s) in {args.out_dir}; "
        f"train with data.shards={args.out_dir}"
    )
    return 0
