"""Resuming ZeRO at another world size: what happens when DeepSpeed's conversion cannot run (the success path,
with real processes, is in tests/dist/test_resume.py)."""

import pytest

from gandist.config import ConfigError
from gandist.strategy import universal

pytest.importorskip("deepspeed")


def test_a_conversion_that_fails_says_which_checkpoint_and_leaves_no_scratch(tmp_path):
    folder = tmp_path / "checkpoints" / "step-000000005"
    (folder / "ds_G" / "state").mkdir(parents=True)  # an engine folder without DeepSpeed's files
    scratch = universal.scratch_folder(folder)
    assert scratch.parent.name == ".universal" and scratch.parent.parent == folder.parent
    scratch.mkdir(parents=True)  # left over from a conversion cut short: cleared first
    (scratch / "stale").write_text("x")
    with pytest.raises(ConfigError) as e:
        universal.convert(folder, ["G"], "state", scratch)
    assert str(folder) in str(e.value) and "resume with the world size that wrote it" in str(e.value)
    assert "\n" not in str(e.value) and not scratch.exists()


def test_universal_loading_is_on_only_while_it_lasts():
    class Config:
        load_universal_checkpoint = False

    class Engine:
        _config = Config()

    engine = Engine()
    with universal.loading([engine]):
        assert engine._config.load_universal_checkpoint is True
    assert engine._config.load_universal_checkpoint is False
