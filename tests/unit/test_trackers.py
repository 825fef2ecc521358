"""Which trackers a run starts: tracking.report_to, 'auto', and what is installed."""

import pytest
from accelerate.utils import LoggerType

from gandist.config import TRACKERS, ConfigError, TrackingConfig, load_config
from gandist.reporting.trackers import flatten, tracker_names


def test_the_trackers_gandist_accepts_are_accelerate_s():
    assert set(TRACKERS) == {str(t) for t in LoggerType} - {"all"}


@pytest.fixture
def no_login(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no `wandb login`
    monkeypatch.delenv("NETRC", raising=False)


def test_auto_is_wandb_with_credentials_or_wandb_mode_else_nothing(no_login, tmp_path):
    auto = TrackingConfig()
    assert auto.report_to == ["auto"]
    assert tracker_names(auto, {}) == []
    assert tracker_names(auto, {"WANDB_API_KEY": "k" * 40}) == ["wandb"]
    assert tracker_names(auto, {"WANDB_MODE": "offline"}) == ["wandb"]
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert tracker_names(auto, {}) == ["wandb"]  # `wandb login` wrote this


def test_named_trackers_must_be_installed(no_login):
    cfg = load_config(None, ["tracking.report_to=tensorboard,mlflow"]).tracking
    assert tracker_names(cfg, {}) == ["tensorboard", "mlflow"]
    assert tracker_names(load_config(None, ["tracking.report_to=none"]).tracking, {}) == []
    from accelerate.tracking import get_available_trackers

    installed = {str(t) for t in get_available_trackers()}
    missing = next((name for name in TRACKERS if name not in installed), None)
    if missing is None:
        pytest.skip("every tracker accelerate knows is installed here")
    with pytest.raises(ConfigError, match=f"includes '{missing}', which is not installed: pip install {missing}"):
        tracker_names(load_config(None, [f"tracking.report_to={missing}"]).tracking, {})


@pytest.mark.parametrize(
    ("value", "message"),
    [("wandb,tensorbord", "unknown tracker"), ("auto,mlflow", "auto and none stand alone"), ("none,wandb", "alone")],
)
def test_unknown_trackers_and_auto_among_others_are_refused(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"tracking.report_to={value}"])


def test_flattened_config_for_hyperparameter_tables():
    flat = flatten({"train": {"kimg": 40.0, "betas": (0.5, 0.9)}, "tags": [], "env": {"gpu": None}})
    assert flat == {"train.kimg": 40.0, "train.betas": "[0.5, 0.9]", "tags": "[]", "env.gpu": None}
