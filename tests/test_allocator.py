"""megatron_cogview.allocator: tcmalloc reaches child processes and restarted commands, and only when asked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_cogview import allocator

ROOT = Path(__file__).resolve().parents[1]


def test_with_tcmalloc_prepends_the_library_once(tmp_path: Path) -> None:
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    found = (str(tmp_path / "missing.so"), str(lib))
    env = allocator.with_tcmalloc({"LD_PRELOAD": "/opt/other.so", "X": "1"}, found)
    assert env == {"LD_PRELOAD": f"{lib} /opt/other.so", "X": "1"}
    assert allocator.with_tcmalloc(env, found) == env  # already there: not added twice
    assert allocator.with_tcmalloc({allocator.OPT_OUT: "system"}, found) == {allocator.OPT_OUT: "system"}
    assert allocator.with_tcmalloc({"X": "1"}, (str(tmp_path / "missing.so"),)) == {"X": "1"}  # none on the system


def _run(code: str, env: dict[str, str]) -> str:
    env = {**env, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


_PRINT = "from megatron_cogview.allocator import loaded_allocator; print(loaded_allocator())"
_REEXEC = "import megatron_cogview.allocator as a; a.reexec_with_tcmalloc(); print(a.loaded_allocator())"


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.OPT_OUT)}


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no system tcmalloc (apt-get install libtcmalloc-minimal4)")
def test_child_environment_and_restart_load_tcmalloc() -> None:
    plain = _plain_env()
    assert _run(_PRINT, plain) == "glibc malloc"
    assert _run(_PRINT, allocator.with_tcmalloc(plain)).startswith("tcmalloc (")
    assert _run(_REEXEC, plain).startswith("tcmalloc (")  # the same command, restarted under tcmalloc
    assert _run(_REEXEC, {**plain, allocator.OPT_OUT: "system"}) == "glibc malloc"


def test_restart_is_a_no_op_without_tcmalloc_on_the_system() -> None:
    code = ("import megatron_cogview.allocator as a; a.CANDIDATES = ('/nonexistent/libtcmalloc.so',); "
            "a.reexec_with_tcmalloc(); print(a.loaded_allocator())")
    assert _run(code, _plain_env()) == "glibc malloc"
