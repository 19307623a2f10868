"""data_utils: synthetic dataset, webdataset shard writer and resumable streaming loader.

Modules: synth / checker (built-in shapes dataset and its attribute checker), preprocess / sources / imageio
(`cogview preprocess`), writer / shards / wds (tar shards and dataset.json), stream / loader / batch
(the resumable, data-parallel streaming loader), cli (the `cogview` subcommands), errors (DataError).
"""
