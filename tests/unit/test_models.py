import importlib.util

import pytest
import torch

from gandist.models import Discriminator, Generator, build_models
from tests.conftest import ROOT

# Counts of the speed reference, benchmarks/reference/plain_gan.py (width 64, 3 channels).
PLAIN_COUNTS = {32: (1068928, 663296), 64: (3576704, 2765568), 128: (12786560, 11164416)}
PLAIN = ROOT / "benchmarks" / "reference" / "plain_gan.py"


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def _plain_gan():
    spec = importlib.util.spec_from_file_location("plain_gan", PLAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("res", [32, 64, 128])
def test_parameter_counts_match_the_speed_reference(res):
    assert (n_params(Generator(res)), n_params(Discriminator(res))) == PLAIN_COUNTS[res]
    plain = _plain_gan()
    assert n_params(Generator(res)) == n_params(plain.generator(res))
    assert n_params(Discriminator(res)) == n_params(plain.discriminator(res))
    # same layers in the same order, same shapes
    ours = [tuple(p.shape) for p in Generator(res).parameters()]
    assert ours == [tuple(p.shape) for p in plain.generator(res).parameters()]


@pytest.mark.parametrize("res", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(res, channels):
    G, D = build_models("dcgan", res, channels, z_dim=20, g_width=8, d_width=8)
    z = torch.randn(5, 20)
    x = G(z)
    assert x.shape == (5, channels, res, res)
    assert x.min() >= -1 and x.max() <= 1
    assert G(z[:, :, None, None]).shape == x.shape
    assert D(x).shape == (5, 1)


def test_bad_resolution_and_arch():
    with pytest.raises(ValueError, match="power of two"):
        Generator(48)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_models("stylegan9", 32, 1, 100, 64, 64)


def test_models_import_torch_only():
    import ast

    for path in (ROOT / "gandist" / "models").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in {
                        "torch",
                        "math",
                        "__future__",
                        "gandist",
                        "typing",
                        "collections",
                        "contextlib",
                        "functools",
                    }, (
                        path,
                        name,
                    )
