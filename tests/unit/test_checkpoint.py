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
    # and engine states converted for a resume at another world size, left by a job that stopped meanwhile
    (tmp_path / "checkpoints" / ".universal" / "step-000000010" / "ds_G").mkdir(parents=True)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step-000000010"
    shared, own = checkpoint.load_checkpoint(latest)
    assert shared["w"].item() == 1.0 and own == {"r": 10}
    checkpoint.clean_partial(tmp_path)
    assert not (tmp_path / "checkpoints" / ".step-000000020.tmp").exists()
    assert not (tmp_path / "checkpoints" / ".universal").exists() and checkpoint.latest_checkpoint(tmp_path) == latest


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
        checkpoint.CheckpointError, match=r"(?i)step-000000002.*no space left.*previous checkpoints are intact"
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


def test_keep_never_deletes_a_checkpoint_of_a_later_step(tmp_path):
    for step in (10, 20, 30):  # an earlier run in this folder
        _save(tmp_path, step, keep=2)
    for step in (1, 2, 3):  # a new run that starts again from step 0
        _save(tmp_path, step, keep=2)
    names = [p.name for p in checkpoint.complete_checkpoints(tmp_path)]
    assert names == ["step-000000002", "step-000000003", "step-000000020", "step-000000030"]


def test_every_file_has_a_checksum_that_loading_verifies(tmp_path):
    path = _save(tmp_path, 1, value=2.0)
    listed = checkpoint.manifest(path)
    assert set(listed) == {"state.pt", "rank-00000.pt"}
    assert listed["state.pt"] == checkpoint.file_sha256(path / "state.pt") and checkpoint.verify(path)
    data = bytearray((path / "rank-00000.pt").read_bytes())
    data[-30] ^= 1
    (path / "rank-00000.pt").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="is damaged: rank-00000.pt does not match the checksum"):
        checkpoint.load_checkpoint(path)
    assert checkpoint.load_checkpoint(path, rank=None)[0]["w"].item() == 2.0  # what is intact still reads


def test_the_newest_intact_checkpoint_is_found_past_damaged_ones(tmp_path):
    older, newer = _save(tmp_path, 1), _save(tmp_path, 2)
    (newer / "state.pt").write_bytes((newer / "state.pt").read_bytes()[:100])
    said = []
    assert checkpoint.latest_intact(tmp_path, said.append) == older
    assert "step-000000002 is damaged" in said[0]
    assert checkpoint.find_checkpoint(tmp_path) == older.resolve()


def test_a_checkpoint_written_before_checksums_loads_unverified(tmp_path):
    path = _save(tmp_path, 1, value=3.0)
    (path / checkpoint.MARKER).write_text("step 1\n")
    assert checkpoint.verify(path) is False and checkpoint.load_checkpoint(path)[0]["w"].item() == 3.0
