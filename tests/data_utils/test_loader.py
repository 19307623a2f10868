"""Streaming loader: dp/worker split, epochs, exact resume, mixing, batch contract."""
from __future__ import annotations

import collections
import dataclasses
import itertools
import os

import numpy as np
import pytest
import torch

from data_utils.errors import DataError
from data_utils.loader import LoaderConfig, StreamingLoader, build_loader
from data_utils.shards import TokenSample
from tests.data_utils.conftest import LAYOUT, SEQ_LEN, make_record
from tokenization.layout import TokenLayout


def _keys(loader, limit: int | None = None) -> list[str]:
    """Sample keys of the batches of a loader (up to `limit` batches)."""
    out = []
    for i, batch in enumerate(loader):
        out += batch["keys"]
        if limit is not None and i + 1 == limit:
            break
    return out


def _ids(keys: list[str]) -> list[str]:
    """Sample keys without their shard prefix."""
    return [k.split("/")[-1] for k in keys]


def test_batch_contract_matches_records(token_dataset):
    path = token_dataset(n=20, per_shard=5)
    loader = build_loader(path, 0, 1, batch_size=4, shuffle_shards=False, shuffle_buffer=0, num_epochs=1)
    batch = next(iter(loader))
    assert set(batch) == {"tokens", "labels", "position_ids", "keys"}  # loss weights are the objective's
    for name in ("tokens", "labels", "position_ids"):
        assert batch[name].dtype == torch.int64 and batch[name].shape == (4, SEQ_LEN - 1)
    for row, key in enumerate(batch["keys"]):
        rec = make_record(int(key.split("/s")[-1]))
        assert torch.equal(batch["tokens"][row], torch.from_numpy(rec.tokens[:-1]))
        assert torch.equal(batch["labels"][row], torch.from_numpy(rec.tokens[1:]))
        assert torch.equal(batch["position_ids"][row], torch.from_numpy(rec.position_ids[:-1]))


def reverse_sample(sample: TokenSample, layout: TokenLayout) -> TokenSample:
    """A test transform (module level: picklable for worker processes): tokens reversed, positions + 1."""
    assert layout == LAYOUT
    return dataclasses.replace(sample, tokens=sample.tokens[::-1].copy(), position_ids=sample.position_ids + 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_sample_transform_runs_before_collate_and_resumes_exactly(token_dataset, workers):
    path = token_dataset(n=53, per_shard=10)
    kwargs = dict(batch_size=4, num_workers=workers, num_epochs=2, shuffle_buffer=16, transform=reverse_sample)
    batches = list(build_loader(path, 0, 1, **kwargs))
    plain = list(build_loader(path, 0, 1, **{**kwargs, "transform": None}))
    assert [b["keys"] for b in batches] == [b["keys"] for b in plain]  # the same samples in the same order
    for batch in batches:
        for row, key in enumerate(batch["keys"]):
            rec = make_record(int(key.split("/s")[-1]))
            assert torch.equal(batch["tokens"][row], torch.from_numpy(rec.tokens[::-1][:-1].copy()))
            assert torch.equal(batch["labels"][row], torch.from_numpy(rec.tokens[::-1][1:].copy()))
            assert torch.equal(batch["position_ids"][row], torch.from_numpy(rec.position_ids[:-1] + 1))
    for stop in (1, 9, len(batches) - 1):
        loader = build_loader(path, 0, 1, **kwargs)
        head = list(itertools.islice(iter(loader), stop))
        resumed = build_loader(path, 0, 1, **kwargs)
        resumed.load_state_dict(loader.state_dict())
        for a, b in zip(head + list(resumed), batches, strict=True):
            assert a["keys"] == b["keys"] and torch.equal(a["tokens"], b["tokens"])
            assert torch.equal(a["position_ids"], b["position_ids"])


def test_dp_ranks_disjoint_union_is_epoch(token_dataset):
    path = token_dataset(n=115, per_shard=10)  # 12 shards, the last one short
    for workers in (0, 2):
        seen = [_keys(build_loader(path, r, 2, batch_size=4, num_workers=workers, num_epochs=1)) for r in range(2)]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(_ids(seen[0] + seen[1])) == [f"s{i:05d}" for i in range(115)]


def test_tensor_parallel_peers_get_identical_batches(token_dataset, monkeypatch):
    path = token_dataset(n=60, per_shard=5)
    batches = []
    for global_rank in ("0", "1"):  # two tp peers of dp rank 0: the environment must not matter
        monkeypatch.setenv("RANK", global_rank)
        monkeypatch.setenv("WORLD_SIZE", "4")
        loader = build_loader(path, 1, 2, batch_size=3, num_workers=2, num_epochs=1)
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(*batches):
        assert a["keys"] == b["keys"] and torch.equal(a["tokens"], b["tokens"])


def test_epochs_cover_every_sample_once_in_new_orders(token_dataset):
    path = token_dataset(n=40, per_shard=5)
    keys = _keys(build_loader(path, 0, 1, batch_size=5, num_epochs=2, shuffle_buffer=8))
    first, second = keys[:40], keys[40:]
    assert sorted(first) == sorted(second) and len(set(first)) == 40
    assert first != second  # shards and samples are reshuffled per epoch
    again = _keys(build_loader(path, 0, 1, batch_size=5, num_epochs=2, shuffle_buffer=8))
    assert keys == again  # seeded
    other = _keys(build_loader(path, 0, 1, batch_size=5, num_epochs=2, shuffle_buffer=8, seed=1))
    assert other != keys


@pytest.mark.parametrize("workers,dp", [(0, 1), (2, 1), (2, 2), (0, 2)])
def test_resume_mid_epoch_reproduces_order(token_dataset, workers, dp):
    path = token_dataset(n=131, per_shard=10)  # uneven shards: workers run out at different times
    kwargs = dict(batch_size=4, num_workers=workers, num_epochs=2, shuffle_buffer=16)
    for rank in range(dp):
        batches = list(build_loader(path, rank, dp, **kwargs))
        full = [k for b in batches for k in b["keys"]]
        for stop in (1, 7, len(batches) - 3, len(batches) - 1):
            loader = build_loader(path, rank, dp, **kwargs)
            head = _keys(loader, limit=stop)
            state = loader.state_dict()
            resumed = build_loader(path, rank, dp, **kwargs)
            resumed.load_state_dict(state)
            assert head + _keys(resumed) == full, (rank, stop)


def test_resume_endless_and_resampled_and_mixed(token_dataset):
    a = token_dataset(n=60, per_shard=5, name="a")
    b = token_dataset(n=40, per_shard=5, name="b", start=1000)
    setups = [
        (a, {}),  # endless epochs
        (a, {"resampled": True}),
        ([a, b], {"weights": [3.0, 1.0]}),
    ]
    for paths, extra in setups:
        kwargs = dict(batch_size=4, num_workers=2, shuffle_buffer=8, **extra)
        full = _keys(build_loader(paths, 0, 1, **kwargs), limit=40)
        loader = build_loader(paths, 0, 1, **kwargs)
        head = _keys(loader, limit=13)
        state = loader.state_dict()
        resumed = build_loader(paths, 0, 1, **kwargs)
        resumed.load_state_dict(state)
        assert head + _keys(resumed, limit=27) == full, extra


def test_mixing_follows_weights(token_dataset):
    a = token_dataset(n=100, per_shard=10, name="a")
    b = token_dataset(n=100, per_shard=10, name="b", start=1000)
    keys = _ids(_keys(build_loader([a, b], 0, 1, batch_size=50, weights=[3, 1], shuffle_buffer=0), limit=40))
    from_b = sum(int(k[1:]) >= 1000 for k in keys) / len(keys)
    assert 0.21 < from_b < 0.29


def test_train_and_validation_splits_never_overlap(token_dataset):
    path = token_dataset(n=100, per_shard=10)
    train = set(_keys(build_loader(path, 0, 1, batch_size=8, num_epochs=1, split="train", val_shards=2)))
    val = set(_keys(build_loader(path, 0, 1, batch_size=8, num_epochs=1, split="val", val_shards=2)))
    assert len(train) == 80 and len(val) == 20 and not train & val


def _truncate(path: str, keep: float) -> None:
    """Cut a file to a fraction of its size."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def test_truncated_shard_is_skipped_and_counted(token_dataset, caplog):
    path = token_dataset(n=40, per_shard=10)
    _truncate(os.path.join(path, "data-000001.tar"), 0.55)
    loader = build_loader(path, 0, 1, batch_size=4, num_epochs=1, shuffle_buffer=0)
    keys = _ids(_keys(loader))
    lost = {f"s{i:05d}" for i in range(10, 20)} - set(keys)
    assert 1 <= len(lost) < 10  # the good prefix of the shard survives
    assert sorted(keys) == sorted(set(f"s{i:05d}" for i in range(40)) - lost)
    assert loader.faults >= 1
    assert "data-000001.tar" in caplog.text
    with pytest.raises(DataError, match="data faults"):
        _keys(build_loader(path, 0, 1, batch_size=4, num_epochs=1, max_faults=0))
    with pytest.raises(DataError, match="data faults"):
        _keys(build_loader(path, 0, 1, batch_size=4, num_epochs=1, max_faults=0, num_workers=2))


def test_corrupt_sample_is_skipped(token_dataset, tmp_path):
    from data_utils.shards import Manifest
    from data_utils.writer import TokenRecord, write_shard

    path = token_dataset(n=20, per_shard=10)
    good = [make_record(i) for i in range(10)]
    bad = TokenRecord("broken", np.zeros(SEQ_LEN), np.arange(SEQ_LEN))
    write_shard(path, "data", 0, good[:3] + [bad] + good[3:], SEQ_LEN, "uint16")
    manifest = Manifest.load(path)
    manifest.shards[0] = type(manifest.shards[0])("data-000000.tar", 11)
    manifest.save(path)
    # corrupt the stored bytes of the bad sample's tokens: replace them with an unreadable .npy
    import tarfile

    from data_utils.wds import AtomicTarWriter, iter_tar

    samples = list(iter_tar(os.path.join(path, "data-000000.tar")))
    for s in samples:
        if s["__key__"] == "broken":
            s["tokens.npy"] = b"not an array"
    with AtomicTarWriter(os.path.join(path, "data-000000.tar")) as w:
        for s in samples:
            w.write(s)
    assert tarfile.is_tarfile(os.path.join(path, "data-000000.tar"))
    loader = build_loader(path, 0, 1, batch_size=7, num_epochs=1)
    keys = _ids(_keys(loader))
    assert sorted(keys) == [f"s{i:05d}" for i in range(20)] and loader.faults == 1


def test_start_errors_are_clear(token_dataset, tmp_path):
    path = token_dataset(n=30, per_shard=10)
    with pytest.raises(DataError, match="3 shard.*2 dp rank.*2 worker"):
        build_loader(path, 0, 2, batch_size=2, num_workers=2)
    build_loader(path, 0, 2, batch_size=2, num_workers=2, resampled=True)  # resampled needs no minimum
    os.remove(os.path.join(path, "data-000002.tar"))
    with pytest.raises(DataError, match="missing.*data-000002.tar"):
        build_loader(path, 0, 1, batch_size=2)
    with pytest.raises(DataError, match="no dataset.json"):
        build_loader(str(tmp_path / "nowhere"), 0, 1, batch_size=2)
    with pytest.raises(DataError, match="rank 2 is outside"):
        build_loader(path, 2, 2, batch_size=2)


def test_manifest_mismatch_refused(token_dataset):
    a = token_dataset(n=20, per_shard=10, name="a")
    b = token_dataset(n=20, per_shard=10, name="b", text_fp="text-b")
    with pytest.raises(DataError, match="another text tokenizer.*re-run `cogview preprocess`"):
        build_loader(a, 0, 1, batch_size=2, text_tokenizer_fingerprint="text-b")
    with pytest.raises(DataError, match="another sequence length"):
        build_loader(a, 0, 1, batch_size=2, seq_len=1089)
    with pytest.raises(DataError, match="different tokenizers"):
        build_loader([a, b], 0, 1, batch_size=2)
    build_loader(a, 0, 1, batch_size=2, text_tokenizer_fingerprint="text-a", layout_fingerprint=LAYOUT.fingerprint(), seq_len=SEQ_LEN)


def test_state_from_other_setup(token_dataset):
    path = token_dataset(n=40, per_shard=5)
    loader = build_loader(path, 0, 1, batch_size=4, num_workers=0, num_epochs=3)
    _keys(loader, limit=3)
    state = loader.state_dict()
    other = build_loader(path, 0, 1, batch_size=4, num_workers=2, num_epochs=3)
    with pytest.raises(DataError, match="different num_workers"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)  # restarts at the next epoch
    keys = _keys(other)
    assert len(keys) == 80 and collections.Counter(keys).most_common(1)[0][1] == 2


def test_break_and_continue_iteration_loses_nothing(token_dataset):
    path = token_dataset(n=50, per_shard=5)
    full = _keys(build_loader(path, 0, 1, batch_size=4, num_workers=2, num_epochs=1))
    loader = build_loader(path, 0, 1, batch_size=4, num_workers=2, num_epochs=1)
    parts = _keys(loader, limit=3) + _keys(loader, limit=2) + _keys(loader)
    assert parts == full
    assert _keys(loader) == []  # a finished finite stream stays finished until reset()
    loader.reset()
    assert _keys(loader) == full


def test_config_errors():
    with pytest.raises(DataError, match="batch_size"):
        LoaderConfig(batch_size=0)
    with pytest.raises(DataError, match="val_shards"):
        LoaderConfig(batch_size=1, split="val")
    with pytest.raises(DataError, match="split"):
        LoaderConfig(batch_size=1, split="test")


def test_streaming_loader_accepts_config_object(token_dataset):
    path = token_dataset(n=20, per_shard=5)
    loader = StreamingLoader(path, LoaderConfig(batch_size=20, num_epochs=1, shuffle_buffer=0, shuffle_shards=False),
                             dp_rank=0, dp_size=1)
    (batch,) = list(loader)
    assert _ids(batch["keys"]) == [f"s{i:05d}" for i in range(20)]


def test_spawned_workers_give_the_same_batches(token_dataset):
    path = token_dataset(n=40, per_shard=5)
    kwargs = dict(batch_size=4, num_workers=2, num_epochs=1, timeout=120)
    forked = _keys(build_loader(path, 0, 1, **kwargs))
    spawned = _keys(build_loader(path, 0, 1, multiprocessing_context="spawn", **kwargs))
    assert spawned == forked and len(forked) == 40
