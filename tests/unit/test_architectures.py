"""ResNet (SNGAN) and compact StyleGAN2: shapes, conditioning, spectral norm, documented sizes."""

import re

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.models import build_models, resnet, stylegan2

ARCHS = ["resnet", "stylegan2"]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [0, 5])
def test_output_shapes(arch, res, num_classes):
    torch.manual_seed(0)
    G, D = build_models(arch, res, 3, z_dim=16, g_width=4, d_width=4, num_classes=num_classes)
    z = torch.randn(4, 16)
    c = torch.tensor([0, 1, 4, 2]) if num_classes else None
    x = G(z, c)
    assert x.shape == (4, 3, res, res) and torch.isfinite(x).all()
    assert D(x, c).shape == (4, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_grey_images(arch):
    G, D = build_models(arch, 32, 1, z_dim=8, g_width=4, d_width=4)
    assert D(G(torch.randn(2, 8))).shape == (2, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_class_labels_change_G_and_D(arch):
    torch.manual_seed(0)
    G, D = build_models(arch, 32, 1, z_dim=8, g_width=4, d_width=4, num_classes=3)
    G.eval()
    with torch.no_grad():  # StyleGAN2's label embedding starts random; the ResNet's CBN starts neutral
        for module in G.modules():
            if isinstance(module, resnet.ConditionalBatchNorm2d):
                module.gain.weight.normal_(1.0, 0.5)
    z = torch.randn(1, 8).repeat(3, 1)
    c = torch.tensor([0, 1, 2])
    with torch.no_grad():
        if arch == "stylegan2":
            for module in G.modules():
                if isinstance(module, stylegan2.SynthesisLayer):
                    module.noise_strength.zero_()
        x = G(z, c)
        assert (x[0] - x[1]).abs().max() > 1e-3 and (x[1] - x[2]).abs().max() > 1e-3
        same = x[:1].repeat(3, 1, 1, 1)
        logits = D(same, c)
    assert (logits[0] - logits[1]).abs() > 1e-6  # the projection head sees the class


@pytest.mark.parametrize("arch", ARCHS)
def test_labels_must_match_conditioning(arch):
    G, D = build_models(arch, 32, 1, z_dim=8, g_width=4, d_width=4, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        G(torch.randn(2, 8))
    G0, D0 = build_models(arch, 32, 1, z_dim=8, g_width=4, d_width=4)
    with pytest.raises(ValueError, match="unconditional"):
        D0(torch.zeros(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="DCGAN is unconditional"):
        load_config(None, ["model.num_classes=3"])  # the model config refuses it before anything is built


def _spectral_layers(D):
    return [m for m in D.modules() if hasattr(m, "parametrizations") and hasattr(m.parametrizations, "weight")]


def test_spectral_norm_keeps_largest_singular_value_near_one():
    torch.manual_seed(0)
    _, D = build_models("resnet", 32, 3, z_dim=8, g_width=8, d_width=8, num_classes=4)
    layers = _spectral_layers(D)
    assert len(layers) == 3 * 3 + 2  # 3 blocks x (2 convs + shortcut), the linear logit, the projection embedding
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2).item() for m in layers]
    assert max(abs(s - 1) for s in raw) > 0.3  # the unnormalised weights are far from 1
    x, c = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    for _ in range(30):  # each training forward runs one power iteration
        D(x, c)
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.02), m


def _documented_counts(module):
    rows = {}
    for line in module.__doc__.splitlines():
        m = re.match(r"\s+(\d+)\s+(\d+)\s+([\d,]+)\s*/\s*([\d,]+)\s+([\d,]+)\s*/\s*([\d,]+)\s*$", line)
        if m:
            res, width, *counts = m.groups()
            rows[(int(res), int(width))] = [int(v.replace(",", "")) for v in counts]
    return rows


@pytest.mark.parametrize(("arch", "module", "z_dim"), [("resnet", resnet, 100), ("stylegan2", stylegan2, 128)])
def test_documented_parameter_counts(arch, module, z_dim):
    rows = _documented_counts(module)
    assert len(rows) >= 3
    for (res, width), (g0, g10, d0, d10) in rows.items():
        G0, D0 = build_models(arch, res, 1, z_dim, width, width)
        G10, D10 = build_models(arch, res, 1, z_dim, width, width, num_classes=10)
        assert [n_params(G0), n_params(G10), n_params(D0), n_params(D10)] == [g0, g10, d0, d10], (res, width)


def test_stylegan2_channel_schedule_and_high_resolutions():
    assert [stylegan2.channels_at(1024, r, 64, 32768, 512) for r in (4, 64, 128, 256, 512, 1024)] == [
        512,
        512,
        256,
        128,
        64,
        32,
    ]
    assert stylegan2.channels_at(32, 4, 64) == 512  # the compact schedule: width * min(8, resolution / r)
    torch.manual_seed(0)
    G, D = build_models("stylegan2", 256, 3, 8, 4, 4, channel_base=512, channel_max=16, mapping_layers=3)
    assert len(G.mapping.layers) == 3
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 3, 256, 256) and D(x).shape == (2, 1)
    assert D.from_rgb.weight.shape[0] == 2  # 512 / 256 channels at 256 px


def test_stylegan2_modulation_demodulates_to_unit_weight_norm():
    conv = stylegan2.ModulatedConv2d(4, 6, 3, w_dim=5)
    x, w = torch.randn(2, 4, 8, 8), torch.randn(2, 5) * 3
    # with demodulation, scaling the styles (hence w's affine output) does not change the output
    out = conv(x, w)
    with torch.no_grad():
        conv.affine.weight.mul_(2.0)
        conv.affine.bias.mul_(2.0)
    torch.testing.assert_close(conv(x, w), out, rtol=1e-4, atol=1e-5)


def test_stylegan2_truncation_pulls_towards_mean_w():
    torch.manual_seed(0)
    G = stylegan2.StyleGAN2Generator(32, z_dim=8, width=4, channels=1)
    for _ in range(3):
        G(torch.randn(16, 8))  # training forwards track w_avg
    assert G.mapping.w_avg.abs().sum() > 0
    z = torch.randn(4, 8)
    G.eval()
    w = G.mapping(z, None)
    w_half = G.mapping(z, None, truncation_psi=0.5)
    torch.testing.assert_close(w_half, (w + G.mapping.w_avg) / 2)


def test_minibatch_stddev_handles_odd_batches():
    for n in (1, 3, 4, 6, 8):
        assert stylegan2.minibatch_stddev(torch.randn(n, 5, 4, 4)).shape == (n, 6, 4, 4)


def test_resnet_minibatch_stddev_lets_D_see_a_batch_variety():
    torch.manual_seed(0)
    _, plain = build_models("resnet", 32, 1, z_dim=8, g_width=4, d_width=4, num_classes=3)
    _, D = build_models("resnet", 32, 1, z_dim=8, g_width=4, d_width=4, num_classes=3, d_mbstd=4)
    plain.eval(), D.eval()  # eval: no power iteration, so repeated calls see the same weights
    x, c = torch.randn(8, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    same = x[:1].expand(8, -1, -1, -1)  # image 0 among copies of itself: no variety in its groups
    with torch.no_grad():
        assert D(x, c).shape == (8, 1)
        # without the layer a sample's logit does not depend on the rest of the batch; with it, it does
        assert torch.allclose(plain(x, c)[0], plain(same, c)[0], atol=1e-6)
        assert not torch.allclose(D(x, c)[0], D(same, c)[0], atol=1e-4)
    # the extra layer is spectrally normalised like the rest of D
    assert hasattr(D.mbstd_conv, "parametrizations") and plain.mbstd_conv is None
    with pytest.raises(ConfigError, match="d_mbstd"):
        load_config(None, ["model.d_mbstd=4"])  # the dcgan D has no such layer


@pytest.mark.parametrize("num_classes", [0, 3])
def test_resnet_hierarchical_z_feeds_every_block(num_classes):
    torch.manual_seed(0)
    G, _ = build_models("resnet", 32, 1, z_dim=9, g_width=4, d_width=4, num_classes=num_classes, g_shared_dim=5)
    G.eval()
    assert G.chunks == [3, 2, 2, 2]  # the first layer's chunk takes what an even split leaves
    z, c = torch.randn(1, 9), (torch.tensor([1]) if num_classes else None)
    with torch.no_grad():
        x = G(z, c)
        # it starts as plain BatchNorm (scale 1, shift 0): the blocks' chunks and the class do nothing yet
        for lo, hi in ((3, 5), (5, 7), (7, 9)):
            moved = z.clone()
            moved[:, lo:hi] += 1
            assert torch.allclose(G(moved, c), x, atol=1e-6)
        for m in G.modules():  # as after training: scale and shift depend on [embedding(c), chunk]
            if isinstance(m, resnet.LinearConditionalBatchNorm2d):
                m.gain.weight.normal_(0, 0.3), m.bias.weight.normal_(0, 0.3)
        x = G(z, c)
        for lo, hi in ((0, 3), (3, 5), (5, 7), (7, 9)):  # each chunk reaches the image
            moved = z.clone()
            moved[:, lo:hi] += 1
            assert (G(moved, c) - x).abs().max() > 1e-3, (lo, hi)
        if num_classes:  # the shared embedding makes G(z, c) depend on c
            assert (G(z, torch.tensor([2])) - x).abs().max() > 1e-3
    cfg = load_config(None, ["model.arch=resnet", "model.g_shared_dim=128", "model.z_dim=128"])
    assert cfg.model.g_shared_dim == 128
    with pytest.raises(ConfigError, match="g_shared_dim"):
        load_config(None, ["model.g_shared_dim=16"])  # the dcgan G has no such conditioning
    with pytest.raises(ConfigError, match="g_shared_dim"):
        load_config(None, ["model.arch=resnet", "model.g_shared_dim=16", "model.z_dim=3"])  # 4 chunks of z at 32 px


def test_resnet_D_without_spectral_norm_has_plain_layers_of_the_same_shapes():
    from gandist.models import build_nets

    cfg = load_config(None, ["model.arch=resnet", "model.num_classes=3", "model.d_mbstd=4", "model.d_width=4"])
    plain_cfg = load_config(
        None, [*(f"model.{k}={v}" for k, v in vars(cfg.model).items()), "model.d_spectral_norm=false"]
    )
    _, D = build_nets(cfg.model, 0)
    _, plain = build_nets(plain_cfg.model, 0)
    layers = lambda net: [
        m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding))
    ]  # noqa: E731,E501
    assert all(hasattr(m, "parametrizations") for m in layers(D))  # SNGAN's D: every layer normalised
    assert not any(hasattr(m, "parametrizations") for m in layers(plain))
    assert [m.weight.shape for m in layers(plain)] == [m.weight.shape for m in layers(D)]
    x, c = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    logits, classes = plain(x, c, classes=True)
    assert logits.shape == (4, 1) and classes.shape == (4, 3)
    with pytest.raises(ConfigError, match="d_spectral_norm"):
        load_config(None, ["model.d_spectral_norm=false"])  # the dcgan D has no spectral norm to turn off
