"""R1 against finite differences, the gradient penalty in closed form, LeCam's running means."""

import pytest
import torch

from gandist.models import build_models
from gandist.objectives.regularizers import LeCam, gradient_penalty, r1_penalty


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
