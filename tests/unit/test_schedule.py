import pytest

from gandist.training.schedule import lr_multiplier


def test_constant_with_warmup():
    assert lr_multiplier(0, 100, 10, "constant", 0) == 0
    assert lr_multiplier(5, 100, 10, "constant", 0) == pytest.approx(0.5)
    assert lr_multiplier(50, 100, 10, "constant", 0) == 1.0
    assert lr_multiplier(50, 100, 0, "constant", 0) == 1.0


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decays_end_at_the_final_fraction(decay):
    assert lr_multiplier(10, 110, 10, decay, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(60, 110, 10, decay, 0.1) == pytest.approx(0.55)  # half way, both shapes
    assert lr_multiplier(110, 110, 10, decay, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(500, 110, 10, decay, 0.1) == pytest.approx(0.1)


def test_cosine_is_flat_at_the_ends():
    early = lr_multiplier(1, 100, 0, "cosine", 0) - lr_multiplier(0, 100, 0, "cosine", 0)
    middle = lr_multiplier(51, 100, 0, "cosine", 0) - lr_multiplier(50, 100, 0, "cosine", 0)
    assert abs(early) < abs(middle) / 10
    with pytest.raises(ValueError, match="unknown learning-rate decay"):
        lr_multiplier(1, 10, 0, "step", 0)
