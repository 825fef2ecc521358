import pytest
import torch

from gandist.training import checkpoint


def _save(run_dir, step, keep=3, value=0.0):
    return checkpoint.save_checkpoint(
        run_dir,
        step,
        shared_state=lambda: {"w": torch.tensor(value)},
        rank_state={"r": step},
        rank=0,
        all_ok=lambda ok: ok,
        keep=keep,
    )


def test_only_complete_checkpoints_are_found(tmp_path):
    _save(tmp_path, 10, value=1.0)
    # a half-written one: a temp folder, and a final-named folder without the marker
    (tmp_path / "checkpoints" / ".step-000000020.tmp").mkdir()
    (tmp_path / "checkpoints" / "step-000000030").mkdir()
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step-000000010"
    shared, own = checkpoint.load_checkpoint(latest)
    assert shared["w"].item() == 1.0 and own == {"r": 10}
    checkpoint.clean_partial(tmp_path)
    assert not (tmp_path / "checkpoints" / ".step-000000020.tmp").exists()


def test_keep_last_n(tmp_path):
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, keep=2)
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000004", "step-000000005"]


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="not a complete checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "x")


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path):
    _save(tmp_path, 1, value=1.0)

    class DiskFull:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(
        checkpoint.CheckpointError, match=r"step-000000002.*No space left.*previous checkpoints are intact"
    ):
        checkpoint.save_checkpoint(
            tmp_path, 2, shared_state=lambda: {"w": DiskFull()}, rank_state={}, rank=0, all_ok=lambda ok: ok
        )
    assert [p.name for p in checkpoint.complete_checkpoints(tmp_path)] == ["step-000000001"]
    assert not list((tmp_path / "checkpoints").glob(".step-*"))
    assert checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path))[0]["w"].item() == 1.0


def test_a_damaged_checkpoint_is_refused_naming_it(tmp_path):
    path = _save(tmp_path, 1)
    (path / "state.pt").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match=r"step-000000001 is damaged"):
        checkpoint.load_checkpoint(path)
