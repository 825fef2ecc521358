"""Training data: WebDataset shards, from images on disk to per-rank batches.

specs.py     data.shards text -> shard URLs; opening a shard (local, pipe:, http)
shards.py    the shard format: a fast tar reader, the shard writer, index.json
images.py    one image: encode, decode (checked), resize
stream.py    one rank's endless (training) or finite (evaluation) stream of uint8 batches
pipeline.py  the tar reader as a webdataset pipeline stage (a drop-in for wds.tarfile_to_samples())
prepare.py   `gandist prepare`: images, IDX files, arrays or shards -> shards
"""
