"""train-vqvae on several processes: 2 gloo ranks x batch b equal 1 process x batch 2b; ranks' codebooks equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_utils.image_sources import find_images
from tests.distributed import run_distributed
from tests.tokenization.conftest import tiny_vqvae_config
from tokenization.vqvae.train import TrainOptions, train_vqvae

STEPS = 4


def _options(data: str, out: Path, batch_size: int) -> TrainOptions:
    return TrainOptions(data=[data], out=out, steps=STEPS, batch_size=batch_size, lr=1e-3, warmup_steps=1,
                        workers=0, save_every=STEPS, log_every=2, seed=3, progress=False)


def _config():  # noqa: ANN202
    # a fast EMA and a high dead-code threshold: 7-22 of 64 codes are re-seeded on every step of this run
    return tiny_vqvae_config(dead_code_threshold=0.6, ema_decay=0.5)


def _rank(rank: int, world: int, data: str, root: str) -> None:
    result = train_vqvae(_config(), _options(data, Path(root) / "ddp", 4), find_images([data]), log=lambda s: None)
    assert result.model is not None and result.model.quantizer.distributed
    torch.save({k: v.detach().cpu() for k, v in result.model.state_dict().items()}, Path(root) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_double_batch(shapes_dir: Path, tmp_path: Path) -> None:
    run_distributed(_rank, 2, str(shapes_dir), str(tmp_path), timeout=300)
    single = train_vqvae(
        _config(), _options(str(shapes_dir), tmp_path / "one", 8), find_images([str(shapes_dir)]), log=lambda s: None
    )
    assert single.model is not None
    reference = single.model.state_dict()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # every rank holds exactly the same codebook and EMA statistics (no broadcast: all-reduced statistics)
    for name in ("quantizer.codebook", "quantizer.cluster_size", "quantizer.embed_avg"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    for name, value in reference.items():
        torch.testing.assert_close(ranks[0][name].float(), value.float(), rtol=1e-4, atol=1e-5, msg=name)
    assert (tmp_path / "ddp" / "model.safetensors").is_file() and (tmp_path / "ddp" / "checkpoint.pt").is_file()
