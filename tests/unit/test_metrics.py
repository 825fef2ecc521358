"""Fréchet distance, KID, precision/recall, feature networks, cached reference statistics, the Evaluator."""

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gandist.config import StrategyConfig
from gandist.metrics import (
    Evaluator,
    FeatureNetError,
    feature_stats,
    frechet_distance,
    kernel_distance,
    load_feature_net,
    mmd2_unbiased,
    precision_recall,
)
from gandist.metrics import reference as reference_module
from gandist.metrics.evaluator import distribution_scores
from gandist.metrics.reference import ReferenceSpec


def _random_psd(d, seed):
    a = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    var1, var2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 1.0])
    want = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2  # |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    assert frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2)) == pytest.approx(want, rel=1e-12)


def test_frechet_closed_form_same_covariance_and_zero():
    s = _random_psd(8, 0)
    mu1, mu2 = torch.zeros(8), torch.arange(8.0)
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(float((mu2**2).sum()), rel=1e-9)
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    d = 32
    s1, s2 = _random_psd(d, 1), _random_psd(d, 2)
    mu1 = torch.randn(d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mu2 = torch.randn(d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy())
    covmean = np.real(covmean)
    want = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)


def test_frechet_of_samples_approaches_the_gaussian_value():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50_000, 4, generator=g, dtype=torch.float64)
    b = torch.randn(50_000, 4, generator=g, dtype=torch.float64) * 2 + 1  # N(1, 4I): FD = 4 + 4 * (2 - 1)^2 = 8
    assert frechet_distance(*feature_stats(a), *feature_stats(b)) == pytest.approx(8.0, rel=0.03)


def test_frechet_refuses_mismatched_statistics():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


def test_mmd2_unbiased_equals_the_definition():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    k = lambda a, b: (a @ b / 3 + 1) ** 3
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(x, y).item() == pytest.approx((xx + yy - 2 * xy).item(), rel=1e-10)


def test_kid_is_unbiased_on_equal_distributions():
    """Over many independent pairs of equal-distribution samples the estimates average to 0 (some negative)."""
    g = torch.Generator().manual_seed(0)
    values = []
    for _ in range(200):
        a, b = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
        values.append(kernel_distance(a, b, num_subsets=1, subset_size=40, generator=g))
    values = torch.tensor(values, dtype=torch.float64)
    stderr = values.std() / math.sqrt(len(values))
    assert abs(values.mean()) < 3 * stderr
    assert (values < 0).any() and (values > 0).any()
    shifted = kernel_distance(torch.randn(40, 8, generator=g) + 1.0, torch.randn(40, 8, generator=g), 10, 40, g)
    assert shifted > 10 * stderr  # different distributions: clearly positive


def test_precision_recall_on_constructed_manifolds():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(2000, 2, generator=g)  # the unit square
    half = torch.rand(2000, 2, generator=g) * torch.tensor([0.5, 1.0])  # its left half
    precision, recall = precision_recall(real, half, k=3)
    assert precision > 0.97  # every fake is realistic ...
    assert 0.45 < recall < 0.6  # ... but only half of the data is covered
    precision, recall = precision_recall(real, real + 10.0, k=3)
    assert precision == 0.0 and recall == 0.0
    precision, recall = precision_recall(real, torch.rand(2000, 2, generator=g), k=3)
    assert precision > 0.9 and recall > 0.9


def test_distribution_scores_tell_a_collapsed_set_from_the_data():
    """One scoring for the Evaluator and benchmarks/quality.py: real (reference) and fake keep their roles."""
    g = torch.Generator().manual_seed(0)
    real, other = torch.rand(2000, 2, generator=g), torch.rand(2000, 2, generator=g)
    collapsed = torch.rand(2000, 2, generator=g) * 0.3  # realistic, a corner of the square only
    mu, sigma = feature_stats(real)
    same = distribution_scores(real, mu, sigma, other, kid_subsets=20, kid_subset_size=500)
    corner = distribution_scores(real, mu, sigma, collapsed, kid_subsets=20, kid_subset_size=500)
    assert set(same) == {"fd", "kid", "precision", "recall", "density", "coverage"}
    assert same["fd"] < 1e-3 and abs(same["kid"]) < 1e-3
    assert min(same["precision"], same["recall"], same["coverage"]) > 0.9
    assert corner["precision"] > 0.95  # every fake is realistic ...
    assert corner["recall"] < 0.2 and corner["coverage"] < 0.2  # ... but most of the data is missed
    assert corner["fd"] > 0.05 and corner["kid"] > 10 * abs(same["kid"])


class TinyFeatures(torch.nn.Module):
    """Mean and spread of fixed random projections of 4x4 patches: a feature net for tests."""

    def __init__(self, channels: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 3, 4, 4)

    def forward(self, x):
        h = torch.tanh(self.conv(x))
        return torch.cat([h.mean(dim=(2, 3)), h.std(dim=(2, 3))], dim=1)


def tiny_factory() -> torch.nn.Module:
    """For the package.module:factory@weights form."""
    return TinyFeatures()


def _script(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny-features.pt"
    torch.jit.save(torch.jit.script(TinyFeatures()), str(path))
    return path


def test_torchscript_and_state_dict_feature_nets(tmp_path):
    path = _script(tmp_path)
    net = load_feature_net(str(path))
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    assert net(x).shape == (5, 6) and net.name == "tiny-features"
    weights = tmp_path / "weights.pt"
    module = TinyFeatures()
    torch.save(module.state_dict(), weights)
    other = load_feature_net(f"tests.unit.test_metrics:tiny_factory@{weights}")
    torch.testing.assert_close(other(x), module(x))
    assert other.identity != net.identity


def test_exported_program_feature_net(tmp_path):
    module = TinyFeatures().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.zeros(4, 1, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "exported.pt2"))
    net = load_feature_net(str(tmp_path / "exported.pt2"))
    x = torch.rand(7, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(net(x), module(x))


def test_missing_feature_nets_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(FeatureNetError) as e:
        load_feature_net("inception")
    text = str(e.value)
    assert str(tmp_path / "hub") in text and "inception-2015-12-05.pt" in text and "https://" in text
    with pytest.raises(FeatureNetError, match="no such file"):
        load_feature_net(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(FeatureNetError, match="not a TorchScript"):
        load_feature_net(str(tmp_path / "junk.pt"))


class FakeInception(torch.nn.Module):
    """Same calling convention as NVlabs' TorchScript Inception: uint8 RGB in, features out."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[1] != 3 or not return_features:
            raise RuntimeError("expected uint8 RGB and return_features=True")
        return x.float().mean(dim=(2, 3))


def test_inception_gets_uint8_rgb(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(FakeInception()), str(path))
    net = load_feature_net(f"inception:{path}")
    features = net(torch.full((2, 1, 8, 8), 1.0))  # grey white images
    torch.testing.assert_close(features, torch.full((2, 3), 255.0))


def _metrics_cfg(tmp_path, **kw):
    base = dict(
        feature_net=str(_script(tmp_path)),
        num_fake=96,
        num_real=0,
        real_features=1000,
        kid_subsets=10,
        kid_subset_size=50,
        pr_k=3,
        batch=32,
        stats_cache="",
    )
    return SimpleNamespace(**{**base, **kw})


def test_reference_statistics_are_cached_next_to_the_shards(tmp_path, tiny_shards, monkeypatch):
    cfg = _metrics_cfg(tmp_path)
    evaluator = Evaluator(cfg, ReferenceSpec.of(cfg, tiny_shards, 32, 1), _single(), say=lambda s: None)
    ref = evaluator.reference()
    assert ref["count"] == 96 and ref["features"].shape == (96, 6) and ref["sigma"].shape == (6, 6)
    cached = list((Path(tiny_shards).parent / "gandist-stats").glob("tiny-features-*.pt"))
    assert len(cached) == 1

    def no_recompute(*a, **k):
        raise AssertionError("reference statistics recomputed despite the cache")

    monkeypatch.setattr(reference_module, "compute_reference", no_recompute)
    again = Evaluator(cfg, ReferenceSpec.of(cfg, tiny_shards, 32, 1), _single(), say=lambda s: None).reference()
    torch.testing.assert_close(again["mu"], ref["mu"])
    limited = reference_module.cache_path(
        reference_module.expand_shards(tiny_shards), evaluator.net, 32, 1, 50, ""
    )  # another number of images, another file
    assert limited != cached[0]


def _single():
    """The strategy of one process on the CPU: what gives the metrics their device and collectives."""
    from gandist.strategy import Strategy, make_accelerator

    return Strategy(make_accelerator(StrategyConfig()), "fp32")


class ReplayG(torch.nn.Module):
    """A 'generator' that returns the real images (uniform noise here) or flat grey ones: the metrics must tell."""

    def __init__(self, images: torch.Tensor, noise: bool):
        super().__init__()
        self.images, self.noise, self.next = images, noise, 0

    def forward(self, z, c=None):
        n = z.shape[0]
        if self.noise:
            return torch.randn(n, 1, 32, 32) * 0.1
        out = self.images[self.next : self.next + n]
        self.next += n
        return out


def test_evaluator_scores_real_images_better_than_noise(tmp_path, tiny_shards):
    from gandist.data.stream import to_device_float

    cfg = _metrics_cfg(tmp_path)
    evaluator = Evaluator(cfg, ReferenceSpec.of(cfg, tiny_shards, 32, 1), _single(), say=lambda s: None)
    urls = reference_module.expand_shards(tiny_shards)
    reals = torch.cat(list(reference_module.iter_images(urls, 1, 32, 96)))
    real_images = to_device_float(reals, torch.device("cpu"), torch.contiguous_format)
    good = evaluator(ReplayG(real_images, noise=False), z_dim=4)
    bad = evaluator(ReplayG(real_images, noise=True), z_dim=4)
    name = "tiny-features"
    measures = ("fid", "kid", "precision", "recall", "coverage", "density")
    assert set(good) == {f"metrics/{m}_{name}" for m in measures} | {"metrics/seconds"}  # no classes: no per-class
    assert good[f"metrics/fid_{name}"] == pytest.approx(0.0, abs=1e-6)  # the very same images
    assert good[f"metrics/precision_{name}"] == 1.0 and good[f"metrics/recall_{name}"] == 1.0
    assert bad[f"metrics/fid_{name}"] > 0.01 and bad[f"metrics/kid_{name}"] > good[f"metrics/kid_{name}"]
    assert bad[f"metrics/precision_{name}"] < 0.5
    assert good[f"metrics/coverage_{name}"] == 1.0 and bad[f"metrics/coverage_{name}"] < 0.5


def test_reference_reader_gives_each_rank_its_share_in_shard_order(tmp_path, tiny_shards):
    import webdataset as wds

    from gandist.data.stream import decode_image

    urls = reference_module.expand_shards(tiny_shards)
    samples = wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))  # webdataset's reading, as a reference
    expected = torch.stack([decode_image(s, 3, 32) for s in samples])
    everything = torch.cat(list(reference_module.iter_images(urls, 3, 32, 40)))
    assert torch.equal(everything, expected)  # grey images broadcast to RGB
    shares = [torch.cat(list(reference_module.iter_images(urls, 3, 32, 7, rank, 3, limit=50))) for rank in range(3)]
    assert [len(s) for s in shares] == [17, 17, 16]
    assert all(torch.equal(share, expected[rank:50:3]) for rank, share in enumerate(shares))


def test_a_damaged_reference_shard_is_an_error_naming_it(tmp_path, tiny_shards):
    from gandist.data.specs import DataError

    urls = reference_module.expand_shards(tiny_shards)
    with open(urls[1], "r+b") as f:
        f.truncate(5000)
    with pytest.raises(DataError, match=f"reference shard {urls[1]} cannot be read to its end"):
        list(reference_module.iter_images(urls, 1, 32, 16))
