"""gandist's tar reader as a stage of a webdataset pipeline: a drop-in for `wds.tarfile_to_samples()`.

    import webdataset as wds
    from gandist.data.pipeline import tarfile_to_samples

    dataset = wds.DataPipeline(
        wds.SimpleShardList("data/fmnist/fashion-mnist-{000000..000005}.tar"),
        wds.split_by_worker,
        tarfile_to_samples(),            # instead of wds.tarfile_to_samples()
        wds.shuffle(1000),
        wds.decode("pil"),
        wds.to_tuple("png", "cls"),
    )

The stage takes what webdataset's shard lists yield ({"url": ...} dicts, or plain strings) and yields the
samples webdataset's stage yields ({"__key__", "__url__", ext: bytes}, extensions in lower case, keys ending
at the first dot of the file name), reading local files, `.tar.gz`, `pipe:` and http(s) URLs like gandist's
training loader. Errors go to `handler` as in webdataset: it returns True to go on with the next shard,
False to stop, or raises (the default, `wds.reraise_exception`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from webdataset import reraise_exception

from gandist.data.specs import iter_shard


def tarfile_to_samples(
    handler: Callable[[Exception], bool] = reraise_exception,
) -> Callable[[Iterable[Any]], Iterator[dict]]:
    """A webdataset pipeline stage: shard URLs in, samples out, read by gandist's tar reader."""

    def stage(source: Iterable[Any]) -> Iterator[dict]:
        for item in source:
            url = item["url"] if isinstance(item, dict) else str(item)
            try:
                yield from iter_shard(url)
            except Exception as exn:  # noqa: BLE001 - the handler decides, as in webdataset
                exn.args = (*exn.args, url)
                if handler(exn):
                    continue
                break

    return stage
