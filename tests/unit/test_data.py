import gzip
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gandist.data.prepare import read_idx
from gandist.data.shards import ShardWriter, TruncatedShard, encode_image, iter_tar, write_shards
from gandist.data.specs import check_dataset, expand_shards
from gandist.data.stream import (
    DataError,
    ShardLoader,
    ShardStream,
    StreamSpec,
    decode_image,
    iter_shard,
    make_loader,
    to_device_float,
)


def _spec(urls, **kw):
    base = dict(urls=urls, batch_per_gpu=8, resolution=32, channels=1, seed=0, rank=0, shuffle_buffer=16)
    return StreamSpec(**{**base, **kw})


def _batches(spec, count):
    it = iter(ShardStream(spec))
    return [next(it) for _ in range(count)]


def _numbered_shards(folder, sizes, fmt="png", name="num", res=32):
    """Shards of grey images whose label is the sample number (a unique id) and whose pixels encode it."""
    count, paths = 0, []
    for i, size in enumerate(sizes):
        with ShardWriter(folder, f"{name}{i}", shard_size=size) as w:
            for _ in range(size):
                image = np.full((res, res), count % 251, np.uint8)
                w.write(f"{count:08d}", {fmt: encode_image(image, fmt), "cls": str(count).encode()})
                count += 1
        paths += [str(p) for p in w.paths]
    return paths


def test_embedded_dataset_is_real_shards():
    urls = expand_shards("")
    assert len(urls) == 6 and all(u.endswith(".tar.gz") for u in urls)
    images, labels, bad, read, bad_shards = next(iter(ShardStream(_spec(urls))))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 32, 32)
    assert labels.min() >= 0 and labels.max() <= 9 and bad == bad_shards == 0 and read >= 8
    assert images.float().std() > 20  # real pictures, not blank


def test_spec_forms_brace_list_folder_and_pipe(tiny_shards, tmp_path):
    urls = expand_shards(tiny_shards)
    assert len(urls) == 4
    assert expand_shards(f"{urls[0]}, {urls[1]}") == urls[:2] == expand_shards(urls[:2])
    assert expand_shards(str(tmp_path / "shards")) == urls  # a folder with index.json
    assert expand_shards(f"pipe:cat {urls[0]}") == [f"pipe:cat {urls[0]}"]
    direct = [s["png"] for s in iter_shard(urls[0])]
    piped = [s["png"] for s in iter_shard(f"pipe:cat {urls[0]}")]
    assert len(direct) == 24 and piped == direct


def test_http_shards_through_curl(tiny_shards, tmp_path):
    import functools
    import http.server
    import shutil
    import threading

    if shutil.which("curl") is None:
        pytest.skip("webdataset reads http(s) URLs with curl, which is not installed")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "shards"))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny-{{000000..000001}}.tar"
        urls = expand_shards(url)
        assert len(urls) == 2
        images, labels, bad, _, _ = next(iter(ShardStream(_spec(urls, shuffle_buffer=0, finite=True))))
        assert images.shape == (8, 1, 32, 32) and bad == 0
    finally:
        server.shutdown()


def test_streams_are_seeded_per_rank_worker_restart_and_reproducible(tiny_shards):
    urls = expand_shards(tiny_shards)
    first = lambda **kw: next(iter(ShardStream(_spec(urls, **kw))))[1]
    assert torch.equal(first(rank=0), first(rank=0))
    assert not torch.equal(first(rank=0), first(rank=1))
    assert not torch.equal(first(rank=0), first(rank=0, seed=1))
    assert not torch.equal(first(rank=0), first(rank=0, restart=1))


def test_endless_loader_with_workers(tiny_shards):
    loader = make_loader(_spec(expand_shards(tiny_shards)), num_workers=2, prefetch_factor=2)
    assert isinstance(loader, ShardLoader)
    it = iter(loader)
    batches = [next(it) for _ in range(16)]  # 128 samples > the 96 there are: the stream is endless
    assert all(images.shape == (8, 1, 32, 32) for images, _ in batches)
    assert loader.read >= 128 and loader.bad == 0


def test_finite_mode_splits_by_rank_then_worker(tmp_path):
    urls = _numbered_shards(tmp_path, [10, 7, 5, 9, 3, 6])  # uneven shards
    seen = []
    for rank in range(2):
        loader = make_loader(_spec(urls, rank=rank, world_size=2, finite=True), num_workers=2, prefetch_factor=2)
        seen.append(sorted(label for _, labels in loader for label in labels.tolist()))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(40))
    assert len(seen[0]) == 10 + 5 + 3 and len(seen[1]) == 7 + 9 + 6  # shards 0,2,4 and 1,3,5


def test_fewer_shards_than_workers_fails_fast_naming_the_spec(tmp_path):
    urls = _numbered_shards(tmp_path, [4, 4])
    with pytest.raises(DataError, match=r"data.shards='my-spec' has 2 shard\(s\), fewer than the 3 loader workers"):
        make_loader(_spec(urls, source="my-spec"), num_workers=3)
    with pytest.raises(DataError, match=r"fewer than the 2 ranks x 2 loader workers"):
        make_loader(_spec(urls, world_size=2, finite=True), num_workers=2)


def test_missing_empty_and_unknown_specs_fail_naming_the_spec(tmp_path):
    with pytest.raises(DataError, match=r"nothing-\{0\.\.1\}\.tar.*does not exist"):
        expand_shards(str(tmp_path / "nothing-{0..1}.tar"))
    with pytest.raises(DataError, match="names no shard"):
        expand_shards(" , ")
    with pytest.raises(DataError, match="is a folder without index.json"):
        expand_shards(str(tmp_path))
    with pytest.raises(DataError, match="unknown scheme 'foo'"):
        expand_shards("foo://bucket/a.tar")


def test_wrong_resolution_is_a_clear_error_with_and_without_index(tiny_shards, tmp_path):
    urls = expand_shards(tiny_shards)
    with pytest.raises(DataError, match=r"index.json holds 32x32 px images but model.resolution=64"):
        check_dataset(urls, 64, tiny_shards)
    check_dataset(urls, 32, tiny_shards)
    (tmp_path / "shards" / "index.json").unlink()
    with pytest.raises(DataError, match=r"tiny-000000.tar holds 32x32 px images but model.resolution=64"):
        check_dataset(urls, 64, tiny_shards)


def test_unreadable_remote_first_shard_fails_fast():
    with pytest.raises(DataError, match=r"data.shards='pipe:exit 3': cannot read pipe:exit 3"):
        check_dataset(["pipe:exit 3"], 32, "pipe:exit 3")


@pytest.mark.slow
def test_train_refuses_shards_of_another_resolution(tiny_shards, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    args = [sys.executable, "-m", "gandist.train", "--config", "configs/tiny.yaml", f"output_dir={tmp_path}"]
    proc = subprocess.run(
        [*args, f"data.shards={tiny_shards}", "model.resolution=64"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "holds 32x32 px images but model.resolution=64" in proc.stderr


def _bad_shard(folder):
    """One shard: 6 good samples and one of each kind of bad one."""
    good = lambda i: encode_image(np.full((32, 32), i, np.uint8), "png")
    with ShardWriter(folder, "bad") as w:
        for i in range(3):
            w.write(f"good{i}", {"png": good(i), "cls": b"1"})
        w.write("corrupt", {"png": b"\x89PNG\r\n\x1a\n not really a png", "cls": b"1"})
        w.write("noimage", {"txt": b"hello", "cls": b"1"})
        w.write("small", {"png": encode_image(np.zeros((16, 16), np.uint8), "png"), "cls": b"1"})
        w.write("badcls", {"png": good(7), "cls": b"seven"})
        for i in range(3, 6):
            w.write(f"good{i}", {"png": good(i), "cls": b"1"})
    return str(w.paths[0])


def _truncate(path, keep_fraction):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep_fraction)])


def test_bad_samples_are_skipped_and_counted_without_sleeping(tmp_path, capfd):
    url = _bad_shard(tmp_path)
    start = time.perf_counter()
    batches = list(ShardStream(_spec([url], batch_per_gpu=4, finite=True, max_bad_frac=1.0, shuffle_buffer=0)))
    assert time.perf_counter() - start < 0.5  # webdataset's warn_and_continue sleeps 0.5 s per bad sample
    images = torch.cat([b[0] for b in batches])
    assert sorted(images[:, 0, 0, 0].tolist()) == [0, 1, 2, 3, 4, 5]
    assert sum(b[2] for b in batches) == 4 and sum(b[3] for b in batches) == 10
    err = capfd.readouterr().err
    assert "skipped sample 'corrupt'" in err and "undecodable png" in err and "no image" in err
    assert "16x16 px, expected 32x32" in err and "further ones are only counted" in err


def test_truncated_tar_and_gzip_shards_are_skipped_and_counted(tmp_path):
    urls = _numbered_shards(tmp_path, [20, 20])
    _truncate(urls[1], 0.5)
    batches = list(ShardStream(_spec(urls, batch_per_gpu=4, finite=True, max_bad_frac=1.0)))
    labels = sorted(torch.cat([b[1] for b in batches]).tolist())
    assert labels[:20] == list(range(20)) and 5 < len(labels) - 20 < 15  # the first half of shard 1 survives
    assert sum(b[2] for b in batches) == 1

    raw = open(urls[0], "rb").read()
    gz = tmp_path / "cut.tar.gz"
    gz.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    batches = list(ShardStream(_spec([str(gz)], batch_per_gpu=4, finite=True, max_bad_frac=1.0)))
    # counted once: a bad sample (the rest of the shard) if some samples came out, else an unreadable shard
    assert sum(b[2] + b[4] for b in batches) == 1 and len(torch.cat([b[1] for b in batches])) < 20


def test_a_shard_that_cannot_be_read_is_a_bad_shard_not_a_bad_sample(tmp_path):
    batches = list(ShardStream(_spec(["pipe:exit 3"], finite=True, max_bad_frac=1.0)))
    assert sum(b[4] for b in batches) == 1 and sum(b[2] for b in batches) == 0
    assert all(len(b[0]) == 0 for b in batches)


def test_too_many_bad_samples_stop_with_an_error_naming_the_spec(tmp_path):
    url = _bad_shard(tmp_path)
    with pytest.raises(DataError, match=r"data.shards='bad-spec': 4 of 10 samples .* > data.max_bad_frac=0.1"):
        list(ShardStream(_spec([url], finite=True, max_bad_frac=0.1, source="bad-spec")))
    # the endless mode judges after bad_check_after samples
    with pytest.raises(DataError, match=r"data.max_bad_frac=0.1"):
        _batches(_spec([url], max_bad_frac=0.1, bad_check_after=100), 40)


def test_bad_counts_reach_the_loader(tmp_path):
    url = _bad_shard(tmp_path)
    loader = make_loader(_spec([url], batch_per_gpu=4, max_bad_frac=0.5), num_workers=0)
    it = iter(loader)
    for _ in range(6):  # 24 good samples: four passes over the shard
        next(it)
    stats = loader.tick_stats(lambda t: t, 1, torch.device("cpu"))
    assert stats["data/bad_samples"] >= 12 and stats["data/bad_total"] == stats["data/bad_samples"]
    assert loader.tick_stats(lambda t: t, 1, torch.device("cpu"))["data/bad_samples"] == 0


def test_all_formats_decode_and_convert_channels(tmp_path):
    yy, xx = np.mgrid[0:32, 0:32]
    smooth = lambda i: np.stack([xx * 8, yy * 8, (xx + yy + 8 * i) * 3], axis=2).clip(0, 255).astype(np.uint8)
    rgb = [(smooth(i), None) for i in range(8)]  # smooth: lossy formats stay close
    for fmt in ("png", "npy", "jpg", "webp"):
        write_shards(rgb, tmp_path / fmt, "rgb", shard_size=8, fmt=fmt)
        url = str(tmp_path / fmt / "rgb-000000.tar")
        images, labels, *_ = next(iter(ShardStream(_spec([url], channels=3, shuffle_buffer=0))))
        assert images.shape == (8, 3, 32, 32) and (labels == -1).all()
        error = (images[0].permute(1, 2, 0).float() - torch.from_numpy(rgb[0][0]).float()).abs().mean()
        assert error == 0 if fmt in ("png", "npy") else error < 8, (fmt, error)
        grey, *_ = next(iter(ShardStream(_spec([url], channels=1, shuffle_buffer=0))))
        expected = np.array(Image.fromarray(rgb[0][0]).convert("L"))
        if fmt in ("png", "npy"):  # the npy fast path computes PIL's luma exactly
            assert torch.equal(grey[0, 0], torch.from_numpy(expected)), fmt


def test_grey_to_rgb_and_flip(tmp_path):
    rng = np.random.default_rng(2)
    grey = [((rng.random((32, 32)) * 255).astype(np.uint8), i) for i in range(16)]
    write_shards(grey, tmp_path, "g", shard_size=16, fmt="png")
    url = str(tmp_path / "g-000000.tar")
    images, labels, *_ = next(iter(ShardStream(_spec([url], channels=3, batch_per_gpu=16, shuffle_buffer=0))))
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    flipped, labels, *_ = next(iter(ShardStream(_spec([url], batch_per_gpu=16, shuffle_buffer=0, xflip=True))))
    plain = [torch.equal(flipped[i, 0], torch.from_numpy(grey[j][0])) for i, j in enumerate(labels.tolist())]
    mirrored = [torch.equal(flipped[i, 0], torch.from_numpy(grey[j][0][:, ::-1].copy())) for i, j in enumerate(labels)]
    assert all(p != m for p, m in zip(plain, mirrored)) and 0 < sum(mirrored) < 16


def test_decode_image_gives_chw():
    sample = {"png": encode_image(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3), "png")}
    image = decode_image(sample, 3, 32)
    assert image.shape == (3, 32, 32) and image.is_contiguous() and image[1, 0, 0] == 1


def test_normalisation_on_device():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    y = to_device_float(x, torch.device("cpu"), torch.contiguous_format)
    assert y.dtype == torch.float32 and y.flatten().tolist() == [-1.0, 1.0]


def test_tar_reader_matches_tarfile_including_long_names(tmp_path):
    path = tmp_path / "x.tar"
    long_name = "d" * 120 + "/sample.png"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in (("a.png", b"1" * 700), (long_name, b"2" * 3), ("a.cls", b"5")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        ours = list(iter_tar(f))
    with tarfile.open(path) as tar:
        theirs = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    assert ours == theirs
    data = bytearray(path.read_bytes())
    data[512 + 1024 + 3] ^= 0xFF  # a bit flip in the second member's header (the first holds 700 bytes)
    with pytest.raises(TruncatedShard, match="checksum mismatch"):
        list(iter_tar(io.BytesIO(bytes(data)), "flipped"))


def test_idx_reader(tmp_path):
    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "x.gz").write_bytes(gzip.compress(data))
    array = read_idx(tmp_path / "x.gz")
    assert array.shape == (2, 2, 3) and array[1, 1, 2] == 11
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


def test_write_shards_keeps_its_signature_and_index(tmp_path):
    samples = [(np.zeros((32, 32), np.uint8), i % 3) for i in range(10)]
    paths = write_shards(samples, tmp_path, "w", shard_size=4, fmt="png", compress=True, meta={"resolution": 32})
    index = json.loads((tmp_path / "index.json").read_text())
    assert [p.name for p in paths] == index["shards"] == [f"w-{i:06d}.tar.gz" for i in range(3)]
    assert index["num_samples"] == 10 and index["shard_samples"] == [4, 4, 2] and index["resolution"] == 32
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_worker_is_silent_when_the_stopping_trainer_abandons_a_batch_handoff():
    """A loader worker hands each batch's shared memory over through its resource sharer; a trainer interrupted by
    a stop signal mid-handoff drops the connection, which the worker's sharer thread used to report as a
    traceback (seen under SIGTERM to the whole process group)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, socket, time
        from multiprocessing import resource_sharer
        from gandist.data.stream import leave_signals_to_the_trainer
        leave_signals_to_the_trainer(0)
        resource_sharer.DupFd(os.open(os.devnull, os.O_RDONLY))  # starts this process's sharer thread
        s = socket.socket(socket.AF_UNIX)
        s.connect(resource_sharer._resource_sharer._address)
        s.close()  # the trainer gone mid-handoff
        time.sleep(1)
        print("alive")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "alive", proc.stderr
    assert proc.stderr == ""


def test_a_process_that_exits_with_its_loader_open_ends_its_workers_quietly(tmp_path):
    """Workers leave SIGTERM to the trainer, so at exit gandist kills the workers of a loader nobody closed. Each
    kill makes torch's SIGCHLD handler raise 'DataLoader worker ... is killed'; raised between two kills it left
    the other workers alive and Python's exit waited on them for ever (a 2-rank launch hung in CI that way)."""
    import subprocess
    import sys
    import textwrap

    paths = _numbered_shards(tmp_path, [8, 8, 8, 8])
    code = textwrap.dedent(
        f"""
        from gandist.data.stream import StreamSpec, make_loader
        spec = StreamSpec(urls={paths!r}, batch_per_gpu=4, resolution=32, channels=1, seed=0, rank=0,
                          shuffle_buffer=8)
        loader = make_loader(spec, num_workers=4, prefetch_factor=2)
        next(iter(loader))
        print(*(w.pid for w in loader._iterator._workers))
        """
    )
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 4
    for pid in pids:  # gone, or at most a zombie of a parent that is itself gone
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"
