"""data_utils: synthetic dataset, webdataset shard writer and resumable streaming loader."""
