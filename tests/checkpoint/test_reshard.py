"""Re-slicing rules agree with the parallel layers' shard/unshard, and the vocabulary re-padding rule."""
from __future__ import annotations

import itertools

import pytest
import torch

from megatron_cogview.checkpoint.reshard import (
    SplitRule,
    check_target_tp,
    expected_shapes,
    reslice,
    split_rule,
    target_vocab_size,
)
from megatron_cogview.config import ConfigError, model_preset
from megatron_cogview.parallel import shard, unshard

torch.set_num_threads(1)


@pytest.mark.parametrize("rule", [SplitRule("column", 0, 3), SplitRule("column", 0), SplitRule("row", 1),
                                  SplitRule("vocab", 0)])
def test_reslice_equals_unshard_then_shard(rule: SplitRule) -> None:
    master = torch.randn(48, 24)
    for n_in, n_out in itertools.product((1, 2, 4), repeat=2):
        shards = [shard(master, rule.dim, n_in, r, rule.stride) for r in range(n_in)]
        assert torch.equal(unshard(shards, rule.dim, rule.stride), master)
        for r in range(n_out):
            expect = shard(master, rule.dim, n_out, r, rule.stride)
            assert torch.equal(reslice(shards, rule, n_out, r), expect), (rule, n_in, n_out, r)


def test_reslice_repads_vocab_with_zero_rows_and_drops_them_again() -> None:
    master = torch.randn(384, 8)
    rule = SplitRule("vocab", 0)
    grown = [reslice([master], rule, 2, r, 512) for r in range(2)]
    full = unshard(grown, 0)
    assert torch.equal(full[:384], master) and not full[384:].any()
    back = reslice(grown, rule, 1, 0, 384)
    assert torch.equal(back, master)


def test_replicated_is_copied_not_viewed() -> None:
    t = torch.randn(5)
    out = reslice([t, t.clone()], split_rule("transformer.final_layernorm.weight"), 4, 3)
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()


def test_rules_match_the_layers_attributes() -> None:
    for tp in (2, 4):
        shapes = expected_shapes(model_preset("tiny"), tp)  # raises if a name rule disagrees with a layer
        kinds = {rule.kind for _, rule in shapes.values()}
        assert kinds == {"vocab", "column", "row", "replicated"}
        assert shapes["transformer.layers.1.attention.query_key_value.weight"] == ((192 // tp, 64), SplitRule("column", 0, 3))
        assert shapes["transformer.layers.0.attention.dense.bias"][1] == SplitRule("replicated")


def test_vocab_rule() -> None:
    assert target_vocab_size(1024, 4, None) == 1024  # divisible: kept
    assert target_vocab_size(1000, 16, None) == 2048  # not divisible: grown to pad_vocab_size(1000, 16)
    assert target_vocab_size(384, 2, 300) == 512  # known real size: Megatron padding for the new tp
    assert target_vocab_size(512, 1, 300) == 384
    assert target_vocab_size(58240, 8, 58219) == 58368
    with pytest.raises(ConfigError, match="names 400 tokens"):
        target_vocab_size(384, 2, 400)


def test_target_tp_must_divide_heads() -> None:
    with pytest.raises(ConfigError, match=r"--target-tp 3 does not divide num_attention_heads=4 .*choose one of 1, 2, 4"):
        check_target_tp(model_preset("tiny"), 3)
