"""Prompt files: one prompt per line, optionally `id<TAB>text`; bad lines are reported and skipped."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from megatron_cogview.config import ConfigError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # safe as a directory name


class PromptFileError(ConfigError):
    """A prompt file that is missing or holds no usable prompt."""


@dataclass(frozen=True)
class PromptLine:
    """One prompt: its id (given, or the 1-based line number as 0001), text and line number."""

    id: str
    text: str
    line: int


@dataclass(frozen=True)
class PromptFile:
    """The usable prompts and one message per skipped line ("prompts.txt:3: empty prompt; skipped")."""

    prompts: list[PromptLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _parse_line(raw: bytes | str, number: int) -> PromptLine | str | None:
    """A prompt, a problem message, or None for a blank line."""
    try:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return "not valid UTF-8; skipped"
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if "\t" not in line:
        return PromptLine(f"{number:04d}", line.strip(), number)
    pid, text = line.split("\t", 1)
    pid, text = pid.strip(), text.strip()
    if "\t" in text:
        return "more than one tab; expected `id<TAB>text`; skipped"
    if not _ID.match(pid):
        return f"id {pid!r} may only hold letters, digits, '_', '-' and '.'; skipped"
    if not text:
        return f"empty prompt (id {pid!r}); skipped"
    return PromptLine(pid, text, number)


def parse_prompts(lines: Iterable[bytes | str], source: str = "prompts") -> PromptFile:
    """Prompts of the given lines; duplicates, bad ids, empty prompts and undecodable lines become problems."""
    result = PromptFile()
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        parsed = _parse_line(raw, number)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            result.problems.append(f"{source}:{number}: {parsed}")
        elif parsed.id in first_line:
            result.problems.append(f"{source}:{number}: duplicate id {parsed.id!r} (first on line {first_line[parsed.id]}); skipped")
        else:
            first_line[parsed.id] = number
            result.prompts.append(parsed)
    return result


def read_prompts(path: str | Path) -> PromptFile:
    """Parse a prompt file; raise PromptFileError if it is missing or no line is usable."""
    p = Path(path)
    if not p.is_file():
        raise PromptFileError(f"prompt file {str(p)!r} does not exist; pass a text file with one prompt per line")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PromptFileError(f"prompt file {str(p)!r} is not UTF-8 text (invalid byte at line {line}, offset "
                              f"{e.start}); save it as UTF-8 with one prompt per line") from None
    if "\x00" in text:
        raise PromptFileError(f"prompt file {str(p)!r} holds NUL bytes: it is a binary file, not text with one prompt "
                              "per line")
    result = parse_prompts(text.splitlines(), p.name)
    if not result.prompts:
        why = f" (first problem: {result.problems[0]})" if result.problems else " (it is empty)"
        raise PromptFileError(f"prompt file {str(p)!r} holds no usable prompt{why}")
    return result
