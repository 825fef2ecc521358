"""Shards that webdataset's own writer filled with BMP and TIFF images train, with no sample skipped."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from tests.conftest import run, train_cmd

pytestmark = pytest.mark.slow


def _write(folder, ext, pil_format, count=64):
    folder.mkdir()
    rng = np.random.default_rng(len(ext))
    with wds.ShardWriter(str(folder / f"{ext}-%06d.tar"), maxcount=count // 2, verbose=0) as sink:
        for i in range(count):
            buf = io.BytesIO()
            Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(buf, format=pil_format)
            sink.write({"__key__": f"{i:06d}", ext: buf.getvalue(), "cls": str(i % 10)})
    return f"{folder}/{ext}-{{000000..000001}}.tar"


def test_bmp_and_tiff_shards_written_by_webdataset_train(tmp_path):
    shards = ",".join([_write(tmp_path / "bmp", "bmp", "BMP"), _write(tmp_path / "tiff", "tiff", "TIFF")])
    run(train_cmd(f"output_dir={tmp_path}", "run_name=r", f"data.shards={shards}", "data.max_bad_frac=0"))
    stats = [json.loads(line) for line in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["kimg"] >= 0.256
    assert stats[-1]["data/bad_total"] == 0 and sum(s["data/samples_read"] for s in stats) >= 256
