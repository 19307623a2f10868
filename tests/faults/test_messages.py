"""Errors shown as one short line; collective failures told apart from other runtime errors."""
from __future__ import annotations

import torch.distributed as dist

from megatron_cogview.training.faults import first_line, from_collective


def test_first_line_drops_source_locations_and_boilerplate() -> None:
    disk = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1528768 vs 1528656\nframe 0 ...")
    assert first_line(disk) == "unexpected pos 1528768 vs 1528656"
    gloo = RuntimeError("[/x/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:57046: Connection reset by "
                        "peer. This is typically caused by a remote worker hanging or bugs in the application.")
    assert first_line(gloo) == "Read error [127.0.0.1]:57046: Connection reset by peer"
    assert first_line(OSError()) == "OSError"


def test_from_collective() -> None:
    assert from_collective(dist.DistBackendError("NCCL communicator was aborted"))
    try:
        raise RuntimeError("a bug of our own")
    except RuntimeError as e:
        assert not from_collective(e)
