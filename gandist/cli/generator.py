"""The commands that use a trained generator: `gandist sample | interpolate | generate | export`.

RUN_OR_CHECKPOINT is a run folder (its newest complete checkpoint), a checkpoint folder
(`runs/NAME/checkpoints/step-*`) or its state.pt; DeepSpeed runs included. G_ema is used unless
`--net G`. Sample i of a seed is the same image in `sample`, `generate` and on any number of ranks.
This module only parses arguments (it imports no torch): the work is in gandist/generator/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gandist.cli.args import Command

SOURCE_HELP = "a run folder (newest complete checkpoint), a checkpoint folder or its state.pt"
FORMATS = ("png", "jpg", "webp", "npy")  # data.images.FORMATS, without importing it (a test keeps them equal)

SAMPLE_DOC = """A PNG grid of samples 0 .. N-1 of a seed from a trained G.

examples:
  gandist sample runs/try1 --out grid.png
  gandist sample runs/try1 --out grid.png --n 100 --seed 3 --truncation 0.7
  gandist sample runs/try1/checkpoints/step-000001250 --out shirts.png --class 6 --net G
"""

INTERPOLATE_DOC = """Latent interpolation (slerp or lerp) between pairs of samples: a PNG grid or an animated GIF.

examples:
  gandist interpolate runs/try1 --out walk.gif --paths 4 --steps 16
  gandist interpolate runs/try1 --out walk.png --mode lerp          # one row per path
"""

GENERATE_DOC = """N generated images as WebDataset shards in the training format (split across the ranks of a launch).

examples:
  gandist generate runs/try1 --num 50000 --out gen/
  gandist generate runs/best --per-class 6000 --out gen/ --format npy    # 6000 images of each class
  accelerate launch --config_file launch/gpus_1node.yaml -m gandist.cli generate runs/try1 --num 1000000 --out gen/

Then train on them: data.shards=gen/ (or a comma list mixing real and generated shards).
Labels are written as `.cls` text digits, as `gandist prepare` writes them.

Truncation for training data: keep the default (none). --truncation PSI redraws the noise
components beyond +-PSI, trading the variety of the tails for typical images: PSI 2 redraws about
5% of the components, PSI 1 about 32%. A classifier trained on the images needs the variety, so
choose PSI by what the data is for: benchmarks/augmentation.py --cas-truncation 1,2 measures the
accuracy of a classifier trained on generated images at each PSI beside none.
"""

EXPORT_DOC = """G's weights as .safetensors (+ a .json description) or a .pt2 torch.export program.

examples:
  gandist export runs/try1 --out g.safetensors
  gandist export runs/try1 --out g.pt2
  python -c "import gandist, torch; G = gandist.load_generator('g.safetensors'); print(G(torch.randn(4, 128)).shape)"
"""


def _common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help=SOURCE_HELP)
    p.add_argument("--net", choices=("G_ema", "G"), default="G_ema", help="the averaged G_ema or the raw G")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="noise seed; sample i depends on (seed, i) only")
        p.add_argument(
            "--truncation",
            type=float,
            default=None,
            metavar="PSI",
            help="truncation trick: components of z with |z| > PSI are redrawn (not clamped)",
        )
        p.add_argument("--class", dest="class_id", type=int, default=None, metavar="C", help="class of every image")
        p.add_argument(
            "--class-balanced", action="store_true", help="sample i gets class i mod num_classes (conditional models)"
        )


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (first GPU, else CPU), cpu, cuda, cuda:1, ...")


def _sample(args: argparse.Namespace) -> int:
    from gandist.generator.load import load_trained, pick_device
    from gandist.generator.sample import check_out_path, write_sample_grid

    out = check_out_path(args.out, (".png",))
    tg = load_trained(args.source, args.net, pick_device(args.device))
    path = write_sample_grid(
        tg, out, args.n, args.seed, args.truncation, args.class_id, args.class_balanced, batch=args.batch
    )
    print(f"gandist sample: {args.n} images of {tg.net} from {tg.checkpoint} -> {path}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from gandist.generator.load import load_trained, pick_device
    from gandist.generator.sample import check_out_path, write_interpolation

    out = check_out_path(args.out, (".png", ".gif"))
    tg = load_trained(args.source, args.net, pick_device(args.device))
    path = write_interpolation(
        tg,
        out,
        args.paths,
        args.steps,
        args.seed,
        args.mode,
        args.truncation,
        args.class_id,
        args.class_balanced,
        args.frame_ms,
        args.batch,
    )
    print(f"gandist interpolate: {args.paths} path(s) x {args.steps} steps ({args.mode}) -> {path}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from gandist.generator.generate import GenerateSpec, check_count, generate, validate
    from gandist.generator.load import load_trained

    spec = GenerateSpec(
        num=args.num,
        per_class=args.per_class,
        out_dir=Path(args.out),
        name=args.name,
        fmt=args.format,
        shard_size=args.shard_size,
        batch=args.batch,
        seed=args.seed,
        truncation=args.truncation,
        class_id=args.class_id,
        balanced=args.class_balanced,
        compress=args.compress,
        overwrite=args.overwrite,
    )
    check_count(spec)  # before reading the checkpoint: the cheapest mistake to report
    # Every rank checks the request before the process group forms, so a mistake stops all ranks
    # with the same message instead of leaving some waiting at a barrier.
    tg = load_trained(args.source, args.net, "cpu")
    validate(spec, tg.num_classes)

    from gandist.config import StrategyConfig
    from gandist.strategy import Strategy, make_accelerator

    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32")
    try:
        tg.G.to(strategy.device)
        generate(tg, spec, strategy)
    finally:
        strategy.close()
    return 0


def _export(args: argparse.Namespace) -> int:
    from gandist.generator.export import EXTENSIONS, export_generator
    from gandist.generator.sample import check_out_path

    check_out_path(args.out, EXTENSIONS)
    paths = export_generator(args.source, args.out, net=args.net)
    print(f"gandist export: {args.net} -> {', '.join(str(p) for p in paths)}")
    return 0


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--n", type=int, default=64, help="number of images (samples 0 .. n-1 of the seed)")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    _add_device(p)


def _interpolate_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--out", required=True, help="output .png (one row per path) or .gif (one frame per step)")
    p.add_argument("--paths", type=int, default=4, help="number of walks, from z(2p) to z(2p+1)")
    p.add_argument("--steps", type=int, default=8, help="points per walk, endpoints included")
    p.add_argument("--mode", choices=("slerp", "lerp"), default="slerp", help="spherical or linear interpolation")
    p.add_argument("--frame-ms", type=int, default=100, help="GIF frame duration in milliseconds")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    _add_device(p)


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--num", type=int, default=None, help="number of images N (keys 0 .. N-1)")
    p.add_argument(
        "--per-class",
        type=int,
        default=None,
        metavar="N",
        help="instead of --num: N images of each class (conditional models; sample i has class i mod classes)",
    )
    p.add_argument("--out", required=True, help="output folder for the shards and index.json")
    p.add_argument("--format", choices=FORMATS, default="png", help="image encoding")
    p.add_argument("--name", default="generated", help="shard name prefix: NAME-000000.tar, ...")
    p.add_argument("--shard-size", type=int, default=2000, help="images per shard")
    p.add_argument("--batch", type=int, default=256, help="images per forward pass on each rank")
    p.add_argument("--compress", action="store_true", help="write .tar.gz shards")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier dataset of this name in --out")


def _export_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, seed=False)
    p.add_argument("--out", required=True, help="output .safetensors (a .json is written beside it) or .pt2")


def _command(name: str, doc: str, add_arguments, work) -> Command:
    return Command(name, doc.splitlines()[0], doc, add_arguments, work)


COMMANDS = [
    _command("sample", SAMPLE_DOC, _sample_arguments, _sample),
    _command("interpolate", INTERPOLATE_DOC, _interpolate_arguments, _interpolate),
    _command("generate", GENERATE_DOC, _generate_arguments, _generate),
    _command("export", EXPORT_DOC, _export_arguments, _export),
]
