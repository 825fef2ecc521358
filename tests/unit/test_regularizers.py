"""R1 against finite differences, the gradient penalty in closed form, LeCam's running means, bCR's T and term."""

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.models import build_models
from gandist.objectives.regularizers import (
    LeCam,
    consistency_penalty,
    consistency_transform,
    gradient_penalty,
    r1_penalty,
)
from tests.unit.conditional_nets import RES, make_phases


class SmoothD(torch.nn.Module):
    """A small conv D with smooth activations (finite differences need no kinks), in float64."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1).double()
        self.fc = torch.nn.Linear(3 * 4 * 4, 1).double()

    def forward(self, x, c=None):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_r1_matches_finite_differences():
    torch.manual_seed(0)
    D, x = SmoothD(), torch.randn(2, 1, 4, 4, dtype=torch.float64)
    penalty, logits = r1_penalty(D, x)
    assert logits.shape == (2, 1)
    eps = 1e-6
    for i in range(2):
        grad = torch.zeros(16, dtype=torch.float64)
        for j in range(16):
            step = torch.zeros(16, dtype=torch.float64)
            step[j] = eps
            plus = D(x[i : i + 1] + step.view(1, 1, 4, 4)).item()
            minus = D(x[i : i + 1] - step.view(1, 1, 4, 4)).item()
            grad[j] = (plus - minus) / (2 * eps)
        assert penalty[i].item() == pytest.approx(grad.square().sum().item(), rel=1e-6)


def test_r1_gradient_reaches_the_parameters_like_finite_differences():
    """create_graph=True: backward of the penalty differentiates the gradient again (double backward)."""
    torch.manual_seed(1)
    D, x = SmoothD(), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    r1_penalty(D, x)[0].sum().backward()
    weight = D.conv.weight
    analytic = weight.grad[0, 0, 1, 1].item()
    eps = 1e-6
    with torch.no_grad():
        weight[0, 0, 1, 1] += eps
    plus = r1_penalty(D, x)[0].sum().item()
    with torch.no_grad():
        weight[0, 0, 1, 1] -= 2 * eps
    minus = r1_penalty(D, x)[0].sum().item()
    assert analytic == pytest.approx((plus - minus) / (2 * eps), rel=1e-5)
    assert abs(analytic) > 1e-4


@pytest.mark.parametrize("arch", ["resnet", "stylegan2", "dcgan"])
def test_r1_double_backward_through_each_D(arch):
    torch.manual_seed(0)
    num_classes = 0 if arch == "dcgan" else 3
    _, D = build_models(arch, 32, 1, 8, 4, 4, num_classes=num_classes)
    c = torch.tensor([0, 2, 1, 1]) if num_classes else None
    penalty, logits = r1_penalty(D, torch.randn(4, 1, 32, 32), c)
    (penalty.mean() + logits.sum() * 0).backward()
    grads = [p.grad for p in D.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)  # every parameter takes part: DDP's reducer needs that
    assert sum(g.abs().sum() for g in grads) > 0


def test_gradient_penalty_of_a_linear_critic():
    w = torch.tensor([3.0, 4.0])  # ||grad|| = 5 everywhere
    D = lambda x, c=None: (x.flatten(1) * w).sum(1, keepdim=True)
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    penalty, _ = gradient_penalty(D, real, fake)
    torch.testing.assert_close(penalty, torch.full((5,), 16.0))


def test_gradient_penalty_samples_between_real_and_fake():
    seen = []

    def D(x, c=None):
        seen.append(x.detach().clone())
        return x.sum(1, keepdim=True)

    real, fake = torch.ones(200, 1), torch.zeros(200, 1)
    gradient_penalty(D, real, fake, generator=torch.Generator().manual_seed(0))
    x = seen[0]
    assert 0 <= x.min() and x.max() <= 1 and 0.4 < x.mean() < 0.6 and x.std() > 0.2


def test_lecam_running_means_and_penalty():
    lecam = LeCam(decay=0.5)
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, -3.0])
    first = lecam.penalty(real, fake)  # the first batch sets the means: ema_real 3, ema_fake -2
    assert lecam.ema_real.item() == pytest.approx(3.0) and lecam.ema_fake.item() == pytest.approx(-2.0)
    want = ((real + 2).clamp(min=0).square().mean() + (3 - fake).clamp(min=0).square().mean()).item()
    assert first.item() == pytest.approx(want)
    lecam.penalty(torch.tensor([1.0]), torch.tensor([0.0]))
    assert lecam.ema_real.item() == pytest.approx(2.0) and lecam.ema_fake.item() == pytest.approx(-1.0)
    restored = LeCam(decay=0.5)
    restored.load_state_dict(lecam.state_dict())
    assert restored.started and restored.ema_real.item() == pytest.approx(2.0)


def test_lecam_penalty_has_gradients_to_the_logits():
    real = torch.tensor([1.0, 2.0], requires_grad=True)
    fake = torch.tensor([0.5, -0.5], requires_grad=True)
    lecam = LeCam(decay=0.9)
    lecam.penalty(real.detach() + 5, fake.detach() + 5)  # means: real 6.5, fake 5
    lecam.penalty(real, fake).backward()  # means now: real 6.0, fake 4.5
    assert real.grad.abs().sum() == 0  # reals below the fake mean: relu(real - ema_fake) = 0
    torch.testing.assert_close(fake.grad, -2 * (6.0 - fake.detach()) / 2)  # d/dfake mean(relu(6 - fake)^2)


def _shifts_and_flips(x: torch.Tensor) -> list[torch.Tensor]:
    """Every image bCR's T may make of x (1 image): flipped or not, shifted by -4..4 pixels each way, mirrored."""
    h = x.shape[-1]
    mirror = lambda i: i % (2 * h - 2) if i % (2 * h - 2) < h else (2 * h - 2) - i % (2 * h - 2)  # noqa: E731
    out = []
    for image in (x, x.flip(-1)):
        for ty in range(-4, 5):
            for tx in range(-4, 5):
                rows = [mirror(i - ty) for i in range(h)]
                cols = [mirror(j - tx) for j in range(h)]
                out.append(image[..., rows, :][..., cols])
    return out


def test_consistency_transform_flips_and_shifts_by_at_most_an_eighth():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 32, 32).expand(400, 1, 32, 32)  # one asymmetric image, many draws of T
    moved = consistency_transform(x)
    candidates = torch.cat(_shifts_and_flips(x[:1]))  # 2 * 9 * 9 images
    match = (moved[:, None] - candidates[None]).flatten(2).abs().amax(2) < 1e-6  # (draws, candidates)
    assert match.any(1).all()  # every draw is one flip-and-shift of the image
    which = match.float().argmax(1)
    flipped = which >= 81
    assert 0.35 < flipped.float().mean() < 0.65  # flipped half the time
    assert len(set(which.tolist())) > 100  # both flips, many shifts
    assert not torch.equal(moved, x)


def test_consistency_penalty_is_zero_for_images_T_leaves_alone_and_trains_D():
    torch.manual_seed(0)
    D = SmoothD()
    D4 = lambda x, c=None: D(x[..., :4, :4])  # noqa: E731  (SmoothD reads 4x4; T moves 8x8 images by 1 pixel)
    flat = torch.rand(6, 1, 1, 1, dtype=torch.float64).expand(6, 1, 8, 8)  # constant images: T changes nothing
    assert consistency_penalty(D4, flat, D4(flat)).item() == pytest.approx(0.0, abs=1e-12)
    images = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    penalty = consistency_penalty(D4, images, D4(images))
    assert penalty.item() > 1e-6
    penalty.backward()
    assert D.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("accumulation", [1, 2])
def test_D_step_with_consistency_reports_it_and_sees_each_image_moved(accumulation):
    g = torch.Generator().manual_seed(0)
    real, z = torch.randn(8, 1, RES, RES, generator=g).clamp(-1, 1), torch.randn(8, 8, generator=g)
    c_real, c_fake = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)
    steps = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(1)
        phases = make_phases(accumulation=accumulation, consistency_weight=weight)
        D = phases.strategy.module("D")
        calls = []
        D.register_forward_pre_hook(lambda _m, args, calls=calls: calls.append(args[0].shape[0]))
        before = [p.detach().clone() for p in D.parameters()]
        assert phases.d_phase(real, z, c_real, c_fake)
        steps[weight] = [p.detach() - b for p, b in zip(D.parameters(), before)]
        reported = phases.stats.means(lambda t: t)
        assert ("loss/consistency" in reported) == (weight > 0)
        # per micro-batch: D(real), D(fake) and, with bCR, D(T(real)) and D(T(fake))
        assert calls == [8 // accumulation] * (4 if weight > 0 else 2) * accumulation
        if weight > 0:
            assert float(reported["loss/consistency"]) > 0
    assert any(not torch.allclose(a, b) for a, b in zip(steps[0.0], steps[10.0]))


def test_consistency_weight_key():
    with pytest.raises(ConfigError, match=r"train\.consistency_weight"):
        load_config(None, ["train.consistency_weight=-1"])
    assert load_config(None, []).train.consistency_weight == 0
    assert load_config(None, ["train.consistency_weight=10"]).train.consistency_weight == 10
