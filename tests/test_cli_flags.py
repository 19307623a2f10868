"""Every CLI built from a dataclass has one flag per field, with the field's default, and no flag twice."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Literal

import pytest

from data_utils.preprocess_config import PreprocessConfig
from megatron_cogview.arguments import build_parser as pretrain_parser
from megatron_cogview.arguments import parse_args
from megatron_cogview.cli import build_parser
from megatron_cogview.config import ConfigError, DataConfig, ModelConfig, ParallelConfig, TrainConfig
from megatron_cogview.dataclass_flags import add_flags, option
from megatron_cogview.generation.config import GenerationConfig
from tokenization.vqvae.config import TrainOptions, VQVAEConfig

# fields deliberately without a flag (written out here, not read from the generator)
NO_FLAG = {
    ModelConfig: {"seed"},  # --seed is TrainConfig.seed
    GenerationConfig: {"static_shapes"},  # implied by --cuda-graphs / --compile
    TrainOptions: {"progress"},
    VQVAEConfig: {"in_channels", "ema_eps", "normalize_mean", "normalize_std"},
    PreprocessConfig: {"num_parts", "part", "wait_for_parts", "styles"},  # from --num-parts/--part or the launcher
}
REQUIRED_T2I = ["--load", "ckpt", "--prompt", "a"]


def subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def all_parsers(parser: argparse.ArgumentParser, path: str = "cogview") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, f"{path} {name}")


def flagged(cls: type, exclude: set[str] = frozenset()) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in NO_FLAG.get(cls, set()) | exclude]


def check_fields(ns: argparse.Namespace, parser: argparse.ArgumentParser, instance: Any,
                 exclude: set[str] = frozenset(), given: dict[str, Any] | None = None) -> None:
    """Each field has a flag (a dest of the parser) whose parsed default is the instance's value."""
    given = given or {}
    for f in flagged(type(instance), exclude):
        assert f.name in dests(parser), f"{type(instance).__name__}.{f.name} has no flag"
        if f.name not in given:
            assert getattr(ns, f.name) == getattr(instance, f.name), f.name


def test_pretrain_flags_are_the_config_fields_with_their_defaults() -> None:
    parser = pretrain_parser()
    args = parse_args([])
    for cls in (ModelConfig, ParallelConfig, TrainConfig, DataConfig):
        for f in flagged(cls):
            assert f.name in dests(parser), f"{cls.__name__}.{f.name} has no flag"
    assert (args.parallel, args.train, args.data) == (ParallelConfig(), TrainConfig(), DataConfig())
    assert args.model_overrides == {} and args.explicit == set()
    help_text = parser.format_help()
    assert "(default: sandwich)" in help_text and "--no-checkpoint-activations" in help_text
    assert "Number of transformer layers. (default: 4)" in " ".join(help_text.split())
    model = parse_args(["--num-layers", "3", "--seed", "9"]).model_config()
    assert (model.num_layers, model.seed) == (3, 9)


def test_generate_and_evaluate_flags_are_the_generation_config_fields() -> None:
    from megatron_cogview.commands.generate import _gen_config

    parser = build_parser()
    for task, argv in (("text2image", REQUIRED_T2I), ("image2text", ["--load", "c", "x.png"])):
        sub = subparser(parser, "generate", task)
        ns = parser.parse_args(["generate", task, *argv])
        check_fields(ns, sub, GenerationConfig())
        assert _gen_config(ns) == GenerationConfig()
    ns = parser.parse_args(["generate", "text2image", *REQUIRED_T2I, "--max-batch", "3", "--compile", "--top-k", "5"])
    assert _gen_config(ns) == GenerationConfig(max_inference_batch_size=3, compile_step=True, top_k=5)
    evaluate = subparser(parser, "evaluate")
    ns = parser.parse_args(["evaluate", "--load", "c", "--data", "d"])
    check_fields(ns, evaluate, GenerationConfig(), exclude={"cuda_graphs", "compile_step"})
    assert "compile_step" not in dests(evaluate) and "cuda_graphs" not in dests(evaluate)


def test_train_vqvae_flags_are_the_options_and_model_fields() -> None:
    from tokenization.cli import _config_from_args

    parser = build_parser()
    sub = subparser(parser, "tokenizer", "train-vqvae")
    ns = parser.parse_args(["tokenizer", "train-vqvae", "--data", "a", "b", "--out", "o"])
    check_fields(ns, sub, TrainOptions(data=["a", "b"], out=Path("o")))
    for f in flagged(VQVAEConfig):  # model flags default to "not given": the default (or the resumed checkpoint's)
        assert f.name in dests(sub) and getattr(ns, f.name) is None, f.name
    assert _config_from_args(ns) == VQVAEConfig()
    help_text = " ".join(sub.format_help().split())
    assert "(default: 8192)" in help_text and "{residual,cogview-original}" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["tokenizer", "train-vqvae", "--out", "o"])  # --data is required (no default)


def test_preprocess_flags_are_the_config_fields() -> None:
    parser = build_parser()
    sub = subparser(parser, "preprocess")
    argv = ["in.jsonl", "--text-tokenizer", "t.model", "--image-tokenizer", "vq", "--out", "o"]
    ns = parser.parse_args(["preprocess", *argv])
    expected = PreprocessConfig(("in.jsonl",), "t.model", "vq", "o")
    check_fields(ns, sub, expected, given={"inputs": ("in.jsonl",)})
    assert ns.inputs == ["in.jsonl"]
    assert (ns.num_parts, ns.part) == (None, None)  # resolved later from the launcher's environment


@pytest.mark.parametrize("which", ["cogview", "pretrain_gpt2.py"])
def test_no_flag_is_declared_twice(which: str) -> None:
    parsers = all_parsers(build_parser()) if which == "cogview" else [(which, pretrain_parser())]
    for path, parser in parsers:
        options = [s for a in parser._actions for s in a.option_strings]
        assert len(options) == len(set(options)), path
        named = [a.dest for a in parser._actions if a.dest != argparse.SUPPRESS]
        assert len(named) == len(set(named)), f"{path}: {sorted(d for d in named if named.count(d) > 1)}"


def test_generator_maps_types_and_metadata() -> None:
    @dataclasses.dataclass
    class Probe:
        name: str = option(help="required: no default")
        mode: Literal["a", "b"] = option("a", "a Literal gives choices")
        size: int | None = option(None, "optional int")
        items: tuple[float, ...] = option((1.0,), "several values")
        fast: bool = option(False, "a switch", flag="--go-fast")
        hidden: int = option(0, "no flag", cli=False)

    p = argparse.ArgumentParser()
    assert add_flags(p, Probe) == ["name", "mode", "size", "items", "fast"]
    ns = p.parse_args(["--name", "x", "--size", "3", "--items", "2", "3.5", "--go-fast"])
    assert vars(ns) == {"name": "x", "mode": "a", "size": 3, "items": [2.0, 3.5], "fast": True}
    for bad in (["--mode", "c", "--name", "x"], [], ["--name", "x", "--hidden", "1"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)


def test_demo_threads_are_chosen_by_its_entry(capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_cogview.cli import main

    parser = build_parser()
    assert parser.parse_args(["demo"]).threads == 2  # the demo's timings were measured with 2
    assert main(["demo", "--threads", "0", "--out", "unused"]) == 2
    assert "--threads 0 must be >= 1" in capsys.readouterr().err


def test_demo_vq_style_fraction_reaches_the_settings(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_cogview.cli import main
    from megatron_cogview.demo import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_demo", lambda out, settings, **kw: seen.append(settings) or {})
    assert main(["demo", "--vq-style-fraction", "0.2", "--out", "unused"]) == 0
    assert seen[0].vq_style_fraction == 0.2 and seen[0] == dataclasses.replace(pipeline.DemoSettings(), vq_style_fraction=0.2)
    assert main(["demo", "--vq-style-fraction", "1.5", "--out", "unused"]) == 2
    assert "--vq-style-fraction 1.5 must be between 0 and 1" in capsys.readouterr().err


def test_demo_precision_reaches_the_settings_and_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from megatron_cogview.cli import main
    from megatron_cogview.demo import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run_demo", lambda out, settings, **kw: seen.append(settings) or {})
    assert main(["demo", "--precision", "fp32", "--out", "unused"]) == 0
    assert main(["demo", "--out", "unused"]) == 0
    assert [s.precision for s in seen] == ["fp32", "auto"]
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert pipeline.resolved(seen[1]).precision == expected
        assert pipeline.resolved(seen[0]).precision == "fp32"  # a forced precision is kept
    with pytest.raises(ConfigError, match="choose one"):
        pipeline.resolved(dataclasses.replace(seen[0], precision="fp16"))
