"""sample / interpolate / export / load_generator on a checkpoint of a real (tiny) training run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gandist
from gandist import cli
from gandist.config import from_dict
from gandist.generator.sample import latents
from gandist.models import build_nets
from gandist.reporting.grids import make_grid
from gandist.training.checkpoint import complete_checkpoints
from tests.generator_fixtures import tiny_trained_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_trained_run(tmp_path_factory)


def reference_G(ckpt, net="G_ema"):
    """G rebuilt by hand from a checkpoint's state.pt, in eval mode as the trainer's grids use it."""
    state = torch.load(ckpt / "state.pt", weights_only=False)
    saved = from_dict(state["config"])
    G, _ = build_nets(saved.model, saved.train.seed)
    G.load_state_dict(state[net])
    return G.eval()


def read_png(path):
    with Image.open(path) as image:
        return np.array(image)


def gandist_cli(*args):
    return cli.main([str(a) for a in args])


def test_sample_grid_is_G_ema_of_the_newest_checkpoint(run_dir, tmp_path):
    older, newest = complete_checkpoints(run_dir)
    assert gandist_cli("sample", run_dir, "--out", tmp_path / "grid.png", "--n", 9, "--seed", 5, "--batch", 4) == 0
    with torch.no_grad():
        expected = make_grid(reference_G(newest)(latents(5, range(9), 16)), rows=3)
    assert np.array_equal(read_png(tmp_path / "grid.png"), expected)
    assert expected.shape == (3 * 34 + 2, 3 * 34 + 2)

    # the older checkpoint, G instead of G_ema, another seed, truncation: each gives other images
    variants = {
        "older": (older, "--seed", 5),
        "G": (run_dir, "--seed", 5, "--net", "G"),
        "seed": (run_dir, "--seed", 6),
        "psi": (run_dir, "--seed", 5, "--truncation", 0.5),
    }
    for name, (source, *options) in variants.items():
        assert gandist_cli("sample", source, "--out", tmp_path / f"{name}.png", "--n", 9, *options) == 0
        assert not np.array_equal(read_png(tmp_path / f"{name}.png"), expected), name
    with torch.no_grad():
        older_expected = make_grid(reference_G(older)(latents(5, range(9), 16)), rows=3)
    assert np.array_equal(read_png(tmp_path / "older.png"), older_expected)


def test_interpolate_png_and_gif(run_dir, tmp_path):
    assert gandist_cli("interpolate", run_dir, "--out", tmp_path / "walk.png", "--paths", 2, "--steps", 5) == 0
    grid = read_png(tmp_path / "walk.png")
    assert grid.shape == (2 * 34 + 2, 5 * 34 + 2)
    # the walks start at samples 0 and 2 and end at samples 1 and 3 of the seed
    with torch.no_grad():
        ends = reference_G(complete_checkpoints(run_dir)[-1])(latents(0, range(4), 16))
    tiles = make_grid(ends, rows=4)  # one per row: tile k at rows 2 + 34k
    tile = lambda image, row, col: image[2 + 34 * row : 34 + 34 * row, 2 + 34 * col : 34 + 34 * col]
    for path in range(2):
        assert np.abs(tile(grid, path, 0).astype(int) - tile(tiles, 2 * path, 0)).max() <= 1
        assert np.abs(tile(grid, path, 4).astype(int) - tile(tiles, 2 * path + 1, 0)).max() <= 1
    assert not np.array_equal(tile(grid, 0, 2), tile(grid, 0, 0))

    assert gandist_cli("interpolate", run_dir, "--out", tmp_path / "walk.gif", "--paths", 4, "--steps", 5) == 0
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 8  # 5 steps there, 3 back
        assert gif.size == (2 * 34 + 2, 2 * 34 + 2)


def test_export_and_load_generator_reproduce_the_checkpoint_bit_for_bit(run_dir, tmp_path):
    newest = complete_checkpoints(run_dir)[-1]
    G_ref = reference_G(newest)
    z = latents(11, range(16), 16)
    with torch.no_grad():
        expected = G_ref(z)

    assert gandist_cli("export", run_dir, "--out", tmp_path / "g.safetensors") == 0
    description = json.loads((tmp_path / "g.json").read_text())
    assert description["model"]["z_dim"] == 16 and description["net"] == "G_ema"
    assert description["checkpoint"] == str(newest.resolve())
    G = gandist.load_generator(tmp_path / "g.safetensors")
    assert isinstance(G, torch.nn.Module) and not G.training and G.z_dim == 16
    with torch.no_grad():
        assert torch.equal(G(z), expected)
        assert torch.equal(gandist.load_generator(run_dir)(z), expected)
        assert torch.equal(gandist.load_generator(newest)(z), expected)
    # the file alone is enough: the description also travels in the safetensors header
    (tmp_path / "g.json").unlink()
    with torch.no_grad():
        assert torch.equal(gandist.load_generator(tmp_path / "g.safetensors")(z), expected)

    assert gandist_cli("export", run_dir, "--out", tmp_path / "g.pt2") == 0
    program = gandist.load_generator(tmp_path / "g.pt2")
    with torch.no_grad():  # a traced program may pick other CPU kernels: equal to float precision, not bitwise
        torch.testing.assert_close(program(z), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(program(z[:3]), expected[:3], rtol=1e-5, atol=1e-6)  # batch size not baked in


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "{missing}", "--out", "{tmp}/a.png"], "does not exist"),
        (["sample", "{empty}", "--out", "{tmp}/a.png"], "no complete checkpoint in"),
        (["sample", "{run}", "--out", "{tmp}/a.jpg"], "--out {tmp}/a.jpg: the extension must be one of .png"),
        (["sample", "{run}", "--out", "{tmp}/a.png", "--class", "2"], "--class 2: the model is unconditional"),
        (["sample", "{run}", "--out", "{tmp}/a.png", "--n", "0"], "--n must be >= 1"),
        (["interpolate", "{run}", "--out", "{tmp}/a.mp4"], "must be one of .png, .gif"),
        (["generate", "{run}", "--num", "0", "--out", "{tmp}/g"], "--num must be >= 1"),
        (["generate", "{run}", "--num", "-3", "--out", "{tmp}/g"], "--num must be >= 1"),
        (["generate", "{run}", "--num", "8", "--out", "{tmp}/g", "--class-balanced"], "model is unconditional"),
        (["generate", "{empty}", "--num", "8", "--out", "{tmp}/g"], "no complete checkpoint in"),
        (["export", "{run}", "--out", "{tmp}/g.pt"], "must be one of .safetensors, .pt2"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(run_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"run": run_dir, "tmp": tmp_path, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    assert cli.main([a.format(**paths) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("gandist: error:") == 1 and message.format(**paths) in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "a.png").exists()
