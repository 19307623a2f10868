"""megatron_cogview/finetune/super_resolution.py: loss weights, restarted positions, and a fine-tune that learns the task."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from data_utils.batch import collate
from data_utils.errors import DataError
from data_utils.shards import Manifest, TokenSample
from data_utils.writer import TokenRecord, write_token_dataset
from megatron_cogview.finetune.super_resolution import (
    CaptionNoise,
    caption_noise,
    main,
    positions_needed,
    sr_objective,
    sr_parts,
    sr_sample,
    sr_task,
)
from tests.training.data import LAYOUT, make_dataset
from tests.training.runner import ROOT, base_args, env, train
from tokenization.templates import super_resolution, text_to_image

LOW, HIGH, MAX_TEXT = 2, 4, 6  # 2x2 low-res codes -> 4x4 high-res codes
SR_SEQ = 1 + MAX_TEXT + 2 + LOW * LOW + 1 + 3 + HIGH * HIGH + 1 + 1
POSITIONS = 26  # fits the text-to-image data (26 inputs) but not the SR sequence (34 inputs): restarts needed


def sr_records(n: int, seed: int) -> Iterator[TokenRecord]:
    """High-res codes are a 2x nearest-neighbour upsampling of the low-res codes (plus a fixed offset)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        text = rng.integers(0, 100, size=int(rng.integers(2, MAX_TEXT + 1)))
        low = rng.integers(0, 32, size=(LOW, LOW))
        high = low.repeat(2, axis=0).repeat(2, axis=1) + 32
        seq = super_resolution(LAYOUT, text.tolist(), low, high, SR_SEQ)
        yield TokenRecord(key=f"r{i:05d}", tokens=seq.tokens, position_ids=seq.position_ids, caption=f"c{i}")


def make_sr_dataset(out: str, n: int, seed: int = 0) -> str:
    write_token_dataset(out, sr_records(n, seed), layout=LAYOUT, seq_len=SR_SEQ, samples_per_shard=64, task="superres",
                        text_tokenizer_fingerprint="tiny-text", image_tokenizer_fingerprint="tiny-image",
                        settings={"image_size": HIGH * 4})
    return out


def sr_batch(recs: list[TokenRecord], txt_loss_scale: float, low_loss_scale: float) -> dict:
    """What the loader and the trainer make of super-resolution records: the sample transform, collate, weights."""
    batch = collate([sr_sample(TokenSample(r.key, r.tokens, r.position_ids, "", {}), LAYOUT) for r in recs])
    objective = sr_objective(LAYOUT, txt_loss_scale, low_loss_scale)
    return {**batch, "loss_weights": objective.weights(batch["tokens"], batch["labels"])}


def test_weights_and_positions_by_segment() -> None:
    recs = list(sr_records(3, seed=1))
    out = sr_batch(recs, txt_loss_scale=0.25, low_loss_scale=0.5)
    for row, rec in enumerate(recs):
        labels = rec.tokens[1:]
        boi2 = int(np.nonzero(rec.tokens == LAYOUT.command("BOI2"))[0][0])
        w = out["loss_weights"][row].numpy()
        high = np.arange(len(labels)) >= boi2
        real = labels != LAYOUT.pad_id
        assert np.all(w[high & real] == 1.0) and labels[high & real][-1] == LAYOUT.command("EOI2")
        assert np.all(w[~real] == 0.0)
        assert np.all(w[np.asarray(LAYOUT.is_text(labels))] == 0.25)
        low = ~high & real & ~np.asarray(LAYOUT.is_text(labels))
        assert np.all(w[low] == 0.5) and int(np.asarray(LAYOUT.is_image(labels))[low].sum()) == LOW * LOW
        pos = out["position_ids"][row].numpy()
        tokens = rec.tokens[:-1]
        assert np.array_equal(pos[tokens != LAYOUT.pad_id], rec.position_ids[:-1][tokens != LAYOUT.pad_id])
        assert np.all(pos[tokens == LAYOUT.pad_id] == 0) and pos.max() < POSITIONS
    seq = text_to_image(LAYOUT, [1, 2], np.arange(16) % 64, 27)
    with pytest.raises(DataError, match="not super-resolution data"):
        sr_sample(TokenSample("x", seq.tokens, seq.position_ids, "", {}), LAYOUT)


def test_positions_needed_reads_the_data(tmp_path: Path) -> None:
    sr = Manifest.load(make_sr_dataset(str(tmp_path / "sr"), 64))
    assert positions_needed(sr) == max(SR_SEQ - (3 + HIGH * HIGH + 1), 3 + HIGH * HIGH + 1) <= POSITIONS
    with pytest.raises(DataError, match="--task superres"):
        positions_needed(Manifest.load(make_dataset(str(tmp_path / "t2i"), n=32)))


def _records_by_key(n: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """key -> (text, low, high) as sr_records drew them (the independent reference for the sequences)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        text = rng.integers(0, 100, size=int(rng.integers(2, MAX_TEXT + 1)))
        low = rng.integers(0, 32, size=(LOW, LOW))
        out[f"r{i:05d}"] = (text, low, low.repeat(2, axis=0).repeat(2, axis=1) + 32)
    return out


def test_caption_noise_swaps_only_the_caption(tmp_path: Path) -> None:
    manifest = Manifest.load(make_sr_dataset(str(tmp_path / "sr"), 64, seed=3))
    truth = _records_by_key(64, seed=3)
    samples = [TokenSample(r.key, r.tokens, r.position_ids, "", {}) for r in sr_records(64, seed=3)]
    noisy = caption_noise(1.0, manifest, seed=5)
    assert sorted(noisy.captions) == sorted(tuple(int(t) for t in v[0]) for v in truth.values())  # the first shard's
    swapped = 0
    for sample in samples:
        text, low, high = truth[sample.key]
        got = noisy(sample, LAYOUT)
        new_text, new_low, new_high = sr_parts(got.tokens, LAYOUT)
        assert np.array_equal(new_low, low.ravel()) and np.array_equal(new_high, high.ravel())
        assert tuple(new_text.tolist()) in noisy.captions
        want = super_resolution(LAYOUT, new_text, low, high, SR_SEQ)  # built afresh, padding at position 0
        assert np.array_equal(got.tokens, want.tokens)
        assert np.array_equal(got.position_ids, np.where(want.tokens == LAYOUT.pad_id, 0, want.position_ids))
        swapped += not np.array_equal(new_text, text)
        again = noisy(sample, LAYOUT)  # fixed per key and seed: a resumed run sees the same sequence
        assert np.array_equal(again.tokens, got.tokens)
    assert swapped >= 56  # 64 draws from 64 captions (some repeat the own one by chance)
    # probability 0, or an own-caption pool: exactly the plain transform
    for sample in samples[:8]:
        plain = sr_sample(sample, LAYOUT)
        own = CaptionNoise(1.0, (tuple(sr_parts(sample.tokens, LAYOUT)[0].tolist()),), 0)(sample, LAYOUT)
        for got in (caption_noise(0.0, manifest, 5)(sample, LAYOUT), own):
            assert np.array_equal(got.tokens, plain.tokens) and np.array_equal(got.position_ids, plain.position_ids)
    # probability 0.5: about half, and other seeds pick other samples
    def changed(seed: int) -> set[str]:
        half = CaptionNoise(0.5, noisy.captions, seed)
        return {s.key for s in samples if not np.array_equal(half(s, LAYOUT).tokens, sr_sample(s, LAYOUT).tokens)}
    assert 16 <= len(changed(1)) <= 48 and changed(1) != changed(2)


def test_caption_noise_is_for_training_only(tmp_path: Path) -> None:
    manifest = Manifest.load(make_sr_dataset(str(tmp_path / "sr"), 64))
    task = sr_task(0.0, 0.25)
    assert task.sample_transform is sr_sample  # validation keeps the true captions
    bound = task.train_transform(manifest, 9)
    assert isinstance(bound, CaptionNoise) and bound.probability == 0.25 and bound.seed == 9
    assert sr_task(0.0).train_transform is None  # default: CogView's recipe


@pytest.mark.parametrize("value", ["1.5", "-0.1", "x"])
def test_caption_noise_flag_is_checked(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--caption-noise", value]) == 2
    err = capsys.readouterr().err
    assert "--caption-noise" in err and len(err.strip().splitlines()) == 1


def _high_res_loss(save: Path, recs: list[TokenRecord]) -> float:
    from megatron_cogview.checkpoint.load import load_model
    from megatron_cogview.parallel import ParallelState

    model, _ = load_model(save, ParallelState.single())
    model.eval()
    batch = sr_batch(recs, 0.0, 0.0)
    with torch.no_grad():
        out = model(batch["tokens"], batch["position_ids"], labels=batch["labels"], loss_weights=batch["loss_weights"])
    return float(out.total / batch["loss_weights"].sum())


@pytest.mark.slow
def test_sr_finetune_lowers_the_high_res_loss(tmp_path: Path) -> None:
    t2i = make_dataset(str(tmp_path / "t2i_data"), n=128, samples_per_shard=32)
    train(base_args(t2i, str(tmp_path / "t2i"), 10, "--max-position-embeddings", str(POSITIONS)))
    data = make_sr_dataset(str(tmp_path / "sr_data"), 256)
    args = base_args(data, str(tmp_path / "sr"), 60, "--finetune-from", str(tmp_path / "t2i"),
                     "--max-position-embeddings", str(POSITIONS), "--log-interval", "20")
    proc = subprocess.run([sys.executable, "-m", "finetune.super_resolution", *args], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning from the weights of" in proc.stdout
    held_out = list(sr_records(32, seed=7))
    before, after = _high_res_loss(tmp_path / "t2i", held_out), _high_res_loss(tmp_path / "sr", held_out)
    assert after < before - 1.0, (before, after)  # measured: 4.91 -> 3.18 (uniform over the 32 codes: 3.47)
    from megatron_cogview.checkpoint.layout import read_meta

    rec = read_meta(tmp_path / "sr")[1].tokenizers
    assert rec["task"] == "superres" and rec["image_size"] == HIGH * 4
    # text-to-image data is refused in one line
    bad = base_args(t2i, str(tmp_path / "bad"), 2, "--max-position-embeddings", str(POSITIONS))
    proc = subprocess.run([sys.executable, "-m", "megatron_cogview.finetune.super_resolution", *bad], env=env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--task superres" in proc.stderr and "Traceback" not in proc.stderr
