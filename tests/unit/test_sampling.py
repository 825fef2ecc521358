"""Noise, labels, interpolation and loading of a trained generator (no training needed here)."""

import pytest
import torch

from gandist.config import Config, to_dict
from gandist.generator.load import SamplingError, load_trained
from gandist.generator.sample import (
    check_class_options,
    interpolation_latents,
    labels_for,
    latents,
    lerp,
    render_indices,
    slerp,
)
from gandist.training import checkpoint
from gandist.training.checkpoint import find_checkpoint
from tests.generator_fixtures import toy_conditional, toy_pixel


def test_noise_of_a_sample_depends_only_on_seed_and_index():
    whole = latents(7, range(40), 16)
    assert torch.equal(latents(7, [5, 6, 7], 16), whole[5:8])
    assert torch.equal(latents(7, [39, 0], 16), whole[[39, 0]])
    assert not torch.equal(latents(8, range(40), 16), whole)
    assert len({tuple(row.tolist()) for row in whole}) == 40  # no two samples share noise


def test_noise_is_standard_normal():
    z = latents(0, range(2000), 16).flatten()
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_truncation_redraws_outliers_instead_of_clamping():
    psi = 0.5
    z = latents(3, range(500), 16, truncation=psi)
    plain = latents(3, range(500), 16)
    assert z.abs().max() <= psi
    assert (z.abs() == psi).sum() == 0  # a clamp would pile values up at the bound
    inside = plain.abs() <= psi
    assert inside.float().mean() < 0.5  # most plain components are redrawn ...
    assert torch.equal(z[inside], plain[inside])  # ... and in-range ones are kept
    assert torch.equal(z, latents(3, range(500), 16, truncation=psi))
    # a truncated standard normal on [-0.5, 0.5] is nearly uniform: std about 0.28
    assert z.std().item() == pytest.approx(0.28, abs=0.02)
    with pytest.raises(SamplingError, match="truncation psi must be > 0"):
        latents(0, range(2), 4, truncation=0)


def test_slerp_follows_the_great_circle():
    a, b = latents(0, [0], 64), latents(0, [1], 64)
    b = b / b.norm() * a.norm()
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    theta = torch.acos((a * b).sum() / a.norm() ** 2)
    for t in (0.25, 0.5, 0.8):
        mid = slerp(a, b, t)
        assert mid.norm().item() == pytest.approx(a.norm().item(), rel=1e-5)  # lerp would shrink it
        angle = torch.acos(((mid * a).sum() / (mid.norm() * a.norm())).clamp(-1, 1))
        assert angle.item() == pytest.approx(t * theta.item(), abs=1e-3)
    assert lerp(a, b, 0.5).norm() < 0.99 * a.norm()
    same = slerp(a, 2 * a, 0.5)  # parallel: no NaN, falls back to the straight line
    assert torch.allclose(same, 1.5 * a)


def test_interpolation_paths_run_between_samples_2p_and_2p_plus_1():
    z = interpolation_latents(seed=4, paths=3, steps=5, z_dim=8)
    ends = latents(4, range(6), 8)
    assert z.shape == (3, 5, 8)
    assert torch.allclose(z[:, 0], ends[0::2], atol=1e-6) and torch.allclose(z[:, -1], ends[1::2], atol=1e-5)
    for bad, message in (({"steps": 1}, "--steps"), ({"paths": 0}, "--paths"), ({"mode": "cubic"}, "--mode")):
        with pytest.raises(SamplingError, match=message):
            interpolation_latents(**{"seed": 0, "paths": 2, "steps": 4, "z_dim": 8, **bad})


@pytest.mark.parametrize(
    "classes, class_id, balanced, message",
    [
        (0, 3, False, "--class 3: the model is unconditional"),
        (0, None, True, "--class-balanced: the model is unconditional"),
        (10, None, False, "conditioned on 10 classes: pass --class C"),
        (10, 10, False, "--class 10 is out of range: the model has classes 0 to 9"),
        (10, -1, False, "--class -1 is out of range"),
        (10, 2, True, "exclude each other"),
    ],
)
def test_class_options_that_do_not_fit_the_model_are_refused(classes, class_id, balanced, message):
    with pytest.raises(SamplingError, match=message):
        check_class_options(classes, class_id, balanced)


def test_labels_one_class_or_balanced():
    assert labels_for(range(4), 0) is None
    assert labels_for(range(3), 5, class_id=2).tolist() == [2, 2, 2]
    assert labels_for(range(5, 12), 3, balanced=True).tolist() == [2, 0, 1, 2, 0, 1, 2]


def test_conditional_generator_is_called_with_the_labels():
    tg = toy_conditional(3)
    images, labels = render_indices(tg, range(7), seed=0, balanced=True, batch=3)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    pixels = ((images + 1) * 127.5).round()
    assert [int(p) for p in pixels[:, 0, 0, 0]] == [toy_pixel(c) for c in labels.tolist()]


def _fake_run(run_dir, step, G_value, G_ema_value, complete=True):
    """A checkpoint as the trainer writes it, with constant weights so G and G_ema can be told apart."""
    from gandist.models import build_nets

    cfg = Config()
    cfg.model.g_width, cfg.model.d_width, cfg.model.z_dim = 8, 8, 16
    G, _ = build_nets(cfg.model, cfg.train.seed)
    states = {}
    for name, value in (("G", G_value), ("G_ema", G_ema_value)):
        states[name] = {
            k: (torch.full_like(v, value) if v.is_floating_point() else v) for k, v in G.state_dict().items()
        }
    path = checkpoint.save_checkpoint(
        run_dir, step, lambda: {**states, "config": to_dict(cfg)}, {}, 0, lambda ok: ok, keep=10
    )
    if not complete:
        (path / checkpoint.MARKER).unlink()
    return path


def test_loads_G_ema_of_the_newest_complete_checkpoint(tmp_path):
    _fake_run(tmp_path, 1, 0.1, 0.2)
    newest = _fake_run(tmp_path, 2, 0.3, 0.4)
    _fake_run(tmp_path, 3, 0.5, 0.6, complete=False)  # an interrupted save is never read
    for source in (tmp_path, newest, newest / "state.pt"):
        tg = load_trained(source)
        assert tg.checkpoint == newest.resolve() and tg.net == "G_ema"
        assert tg.G.main[0].weight.flatten()[0].item() == pytest.approx(0.4)
    G = load_trained(tmp_path, net="G").G
    assert G.main[0].weight.flatten()[0].item() == pytest.approx(0.3)
    assert not G.training and not any(p.requires_grad for p in G.parameters())


def test_only_state_pt_is_needed(tmp_path):
    # a DeepSpeed checkpoint: state.pt (full G, G_ema, config) plus engine folders, no per-rank files
    ckpt = _fake_run(tmp_path, 7, 0.1, 0.2)
    (ckpt / "rank-00000.pt").unlink()
    (ckpt / "engine_G" / "global_step7").mkdir(parents=True)
    (ckpt / "engine_G" / "global_step7" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"not read")
    tg = load_trained(tmp_path)
    assert tg.checkpoint == ckpt.resolve() and tg.G.main[0].weight.flatten()[0].item() == pytest.approx(0.2)


def test_sources_without_a_complete_checkpoint_are_refused(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        find_checkpoint(tmp_path / "nope")
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint in"):
        find_checkpoint(tmp_path)
    half = _fake_run(tmp_path, 5, 0.1, 0.2, complete=False)
    with pytest.raises(checkpoint.CheckpointError, match=r"only incomplete saves: step-000000005"):
        find_checkpoint(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="is not a complete checkpoint"):
        find_checkpoint(half)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match="not a checkpoint's state.pt"):
        find_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(SamplingError, match="net 'D' is not one of"):
        load_trained(tmp_path, net="D")
