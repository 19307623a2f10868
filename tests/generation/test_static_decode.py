"""The shape-static decode step (for CUDA graphs / torch.compile) draws exactly the default step's tokens."""
from __future__ import annotations

import pytest
import torch

from megatron_cogview.generation import GenerationConfig, GenerationError, decode, generate_image_codes
from megatron_cogview.model import CogViewModel
from tests.generation.conftest import IMAGE

MIXED = [[957, 300, 301, 960, 958], [957, 420, 960, 958], [957, 500, 501, 502, 960, 958]]
EQUAL = [[957, 300, 960, 958], [957, 421, 960, 958]]


@pytest.mark.parametrize("prompts", [MIXED, EQUAL], ids=["mixed-lengths", "equal-lengths"])
@pytest.mark.parametrize("config", [GenerationConfig(temperature=0), GenerationConfig(top_k=30, top_p=0.9, seed=3)],
                         ids=["greedy", "sampled"])
def test_static_step_equals_default_step(model: CogViewModel, prompts: list, config: GenerationConfig) -> None:
    want = generate_image_codes(model, prompts, 40, IMAGE, config)
    got = generate_image_codes(model, prompts, 40, IMAGE, config.replace(static_shapes=True))
    assert torch.equal(got, want)
    # chunks of one row each take the same path row by row
    got = generate_image_codes(model, prompts, 40, IMAGE, config.replace(static_shapes=True, max_inference_batch_size=1))
    assert torch.equal(got, want)


def test_stop_ids_fall_back_to_the_default_step(model: CogViewModel) -> None:
    config = GenerationConfig(top_k=30, seed=2)
    want = decode(model, MIXED, 16, config, allowed=[(256, 262)], stop_ids=[258])
    got = decode(model, MIXED, 16, config.replace(static_shapes=True), allowed=[(256, 262)], stop_ids=[258])
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.lengths, want.lengths)


def test_cuda_graphs_without_cuda_is_one_clear_error(model: CogViewModel) -> None:
    with pytest.raises(GenerationError, match="cuda_graphs needs the model on a CUDA device"):
        generate_image_codes(model, MIXED, 4, IMAGE, GenerationConfig(cuda_graphs=True))


@pytest.mark.slow
def test_compiled_step_equals_eager(model: CogViewModel) -> None:
    config = GenerationConfig(top_k=30, seed=5)
    want = generate_image_codes(model, MIXED, 12, IMAGE, config)
    got = generate_image_codes(model, MIXED, 12, IMAGE, config.replace(compile_step=True))
    assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_equal_eager_on_gpu() -> None:
    from megatron_cogview.config import model_preset
    from megatron_cogview.parallel import ParallelState

    gpu = CogViewModel(model_preset("tiny"), ParallelState.single(), device="cuda").eval()
    config = GenerationConfig(top_k=30, seed=5)
    want = generate_image_codes(gpu, MIXED, 24, IMAGE, config)
    got = generate_image_codes(gpu, MIXED, 24, IMAGE, config.replace(cuda_graphs=True))
    assert torch.equal(got, want)


@pytest.mark.parametrize("static", [False, True])
def test_progress_counts_every_step_of_every_chunk(model: CogViewModel, static: bool) -> None:
    seen: list[tuple[int, int]] = []
    config = GenerationConfig(seed=1, max_inference_batch_size=2, static_shapes=static)
    generate_image_codes(model, MIXED, 5, IMAGE, config, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(t, 10) for t in range(1, 11)]  # 3 prompts in chunks of 2 -> 2 chunks x 5 steps
