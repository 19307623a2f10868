"""Command-line arguments of pretrain_gpt2.py / `cogview train`, generated from the config dataclasses."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

from megatron_cogview.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    ModelConfig,
    ParallelConfig,
    TrainConfig,
    model_preset,
)
from megatron_cogview.dataclass_flags import add_flags, flag_values

# ModelConfig.seed is taken from TrainConfig.seed (one seed per run).
SKIP = {ModelConfig: {"seed"}}
GROUPS = (("model", ModelConfig), ("parallel", ParallelConfig), ("training", TrainConfig), ("data", DataConfig))


@dataclass
class Args:
    """Parsed configuration of one run."""

    model_overrides: dict[str, Any]
    preset: str
    model_config_file: str
    parallel: ParallelConfig
    train: TrainConfig
    data: DataConfig
    deepspeed_config: str
    explicit: set[str] = field(default_factory=set)

    def model_config(self, **fixed: Any) -> ModelConfig:
        """The model: preset (or --model-config file), then explicit flags, then values fixed by the data."""
        base = ModelConfig.from_json(self.model_config_file).to_dict() if self.model_config_file else (
            model_preset(self.preset).to_dict())
        for key, value in fixed.items():
            if key in self.model_overrides and self.model_overrides[key] != value:
                raise ConfigError(f"--{key.replace('_', '-')} {self.model_overrides[key]} disagrees with the data, "
                                  f"which needs {value}; drop the flag")
        return ModelConfig.from_dict({**base, **self.model_overrides, **fixed, "seed": self.train.seed})


def build_parser() -> argparse.ArgumentParser:
    """The full parser: one group per config dataclass plus DeepSpeed's flags."""
    p = argparse.ArgumentParser(
        prog="pretrain_gpt2.py",
        description="Pre-train CogView with DeepSpeed (run under deepspeed, torchrun or plain python).",
    )
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="model preset (default: demo)")
    p.add_argument("--model-config", default="", help="JSON ModelConfig file instead of a preset")
    for title, cls in GROUPS:
        group = p.add_argument_group(title, cls.__doc__)
        add_flags(group, cls, skip=SKIP.get(cls, ()), bools="optional", suppress_defaults=True, show_defaults=True)
    ds = p.add_argument_group("deepspeed", "DeepSpeed's own flags")
    ds.add_argument("--deepspeed", action="store_true", help="accepted for compatibility; DeepSpeed is always used")
    ds.add_argument("--deepspeed_config", "--deepspeed-config", default="", help="DeepSpeed JSON; see README for how "
                    "its values combine with the flags")
    ds.add_argument("--local_rank", "--local-rank", type=int, default=-1, help="set by the launcher")
    return p


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse the command line into configs (invalid values raise ConfigError with the field name)."""
    namespace = build_parser().parse_args(argv)
    ns = vars(namespace)
    explicit = {k for k in ns if k not in ("preset", "model_config", "deepspeed", "deepspeed_config", "local_rank")}

    def pick(cls: type) -> dict[str, Any]:
        names = {f.name for f in dataclasses.fields(cls)} - SKIP.get(cls, set())
        return flag_values(cls, namespace, names)

    model_overrides = pick(ModelConfig)
    if model_overrides:
        ModelConfig.from_dict({**model_preset(ns["preset"]).to_dict(), **model_overrides})  # validate early
    return Args(
        model_overrides=model_overrides,
        preset=ns["preset"],
        model_config_file=ns["model_config"],
        parallel=ParallelConfig(**pick(ParallelConfig)),
        train=TrainConfig(**pick(TrainConfig)),
        data=DataConfig(**pick(DataConfig)),
        deepspeed_config=ns["deepspeed_config"],
        explicit=explicit,
    )
