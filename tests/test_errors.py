"""The shared user-error leaf: one base class under every user-error type, one exit-2 wrapper for every CLI."""
from __future__ import annotations

import pytest

from data_utils.errors import DataError
from data_utils.wds import ShardReadError
from megatron_cogview.checkpoint.layout import CheckpointError
from megatron_cogview.config import ConfigError
from megatron_cogview.errors import USER_ERRORS, UserError, exit_on_user_error
from megatron_cogview.generation.config import GenerationError
from megatron_cogview.model.cogview import ModelInputError
from megatron_cogview.parallel.state import ParallelStateError
from megatron_cogview.tasks.prompts import PromptFileError
from tokenization.errors import TokenizationError


@pytest.mark.parametrize("cls", [ConfigError, DataError, ShardReadError, TokenizationError, CheckpointError,
                                 GenerationError, ModelInputError, ParallelStateError, PromptFileError])
def test_every_user_error_type_shares_the_base(cls: type[Exception]) -> None:
    assert issubclass(cls, UserError) and issubclass(cls, ValueError)  # ValueError: callers catching it still do


@pytest.mark.parametrize("error", [DataError("bad shard; remake it"), TokenizationError("no such model; train one"),
                                   FileNotFoundError("x.txt"), PermissionError("read-only folder")])
def test_user_error_is_one_line_and_exit_2(error: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    def body() -> int:
        raise error

    assert exit_on_user_error("cogview x", body) == 2
    assert capsys.readouterr().err == f"cogview x: error: {error}\n"


def test_prefix_may_be_computed_after_the_body(capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []

    def body() -> None:
        calls.append("body")
        raise ConfigError("--lr must be > 0")

    assert exit_on_user_error(lambda: f"prog after {calls}", body) == 2
    assert capsys.readouterr().err == "prog after ['body']: error: --lr must be > 0\n"


def test_return_codes_pass_through_and_bugs_are_not_hidden() -> None:
    assert exit_on_user_error("p", lambda: None) == 0
    assert exit_on_user_error("p", lambda: 3) == 3
    assert RuntimeError not in USER_ERRORS and KeyError not in USER_ERRORS

    def bug() -> int:
        raise RuntimeError("a bug: keep the traceback")

    with pytest.raises(RuntimeError):
        exit_on_user_error("p", bug)
