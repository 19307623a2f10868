"""Split rules derived from the layers, re-slicing vs the layers' shard/unshard, and the vocabulary re-padding rule."""
from __future__ import annotations

import itertools

import pytest
import torch

from megatron_cogview.checkpoint.reshard import (
    check_target_tp,
    expected_shapes,
    reslice_param,
    split_rules,
    target_vocab_size,
)
from megatron_cogview.config import ConfigError, ModelConfig, model_preset
from megatron_cogview.parallel import Sharding, shard, unshard

torch.set_num_threads(1)


def _name_table(name: str) -> Sharding:
    """The rules as a hand-written table of the original CogView names (the independent reference)."""
    if name == "word_embeddings.weight":
        return Sharding("vocab", 0)
    if name.endswith((".attention.query_key_value.weight", ".attention.query_key_value.bias")):
        return Sharding("column", 0, 3)
    if name.endswith((".mlp.dense_h_to_4h.weight", ".mlp.dense_h_to_4h.bias")):
        return Sharding("column", 0)
    if name.endswith((".attention.dense.weight", ".mlp.dense_4h_to_h.weight")):
        return Sharding("row", 1)
    return Sharding("replicated")


@pytest.mark.parametrize("config", [
    model_preset("cogview-4b"),
    model_preset("tiny"),
    model_preset("tiny", layernorm_order="pre"),
    model_preset("tiny", layernorm_order="post"),
], ids=["cogview-4b", "tiny-sandwich", "tiny-pre", "tiny-post"])
def test_rules_derived_from_the_layers_equal_the_name_table(config: ModelConfig) -> None:
    rules = split_rules(config)
    assert rules == {name: _name_table(name) for name in rules}
    norms = [n for n in rules if n.endswith("layernorm.weight")]
    per_layer = {"sandwich": 4, "pre": 2, "post": 2}[config.layernorm_order]
    assert len(norms) == config.num_layers * per_layer + (config.layernorm_order != "post")
    for tp in (2, 4):  # the same rules at every tp size
        assert {n: r for n, (_, r) in expected_shapes(config, tp).items()} == rules


@pytest.mark.parametrize("rule", [Sharding("column", 0, 3), Sharding("column", 0), Sharding("row", 1),
                                  Sharding("vocab", 0)])
def test_reslice_equals_unshard_then_shard(rule: Sharding) -> None:
    master = torch.randn(48, 24)
    for n_in, n_out in itertools.product((1, 2, 4), repeat=2):
        shards = [shard(master, rule.dim, n_in, r, rule.stride) for r in range(n_in)]
        assert torch.equal(unshard(shards, rule.dim, rule.stride), master)
        for r in range(n_out):
            expect = shard(master, rule.dim, n_out, r, rule.stride)
            assert torch.equal(reslice_param(shards, rule, n_out, r), expect), (rule, n_in, n_out, r)


def test_reslice_repads_vocab_with_zero_rows_and_drops_them_again() -> None:
    master = torch.randn(384, 8)
    rule = Sharding("vocab", 0)
    grown = [reslice_param([master], rule, 2, r, 512) for r in range(2)]
    full = unshard(grown, 0)
    assert torch.equal(full[:384], master) and not full[384:].any()
    back = reslice_param(grown, rule, 1, 0, 384)
    assert torch.equal(back, master)


def test_replicated_is_copied_not_viewed() -> None:
    t = torch.randn(5)
    out = reslice_param([t, t.clone()], split_rules(model_preset("tiny"))["transformer.final_layernorm.weight"], 4, 3)
    assert torch.equal(out, t) and out.data_ptr() != t.data_ptr()


def test_rules_match_the_layers_attributes() -> None:
    for tp in (2, 4):
        shapes = expected_shapes(model_preset("tiny"), tp)
        kinds = {rule.kind for _, rule in shapes.values()}
        assert kinds == {"vocab", "column", "row", "replicated"}
        assert shapes["transformer.layers.1.attention.query_key_value.weight"] == ((192 // tp, 64), Sharding("column", 0, 3))
        assert shapes["transformer.layers.0.attention.dense.bias"][1] == Sharding("replicated")


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
