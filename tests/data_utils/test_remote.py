"""Shards by URL: pipe: commands and a local HTTP server read exactly like the local files; a cut stream is a fault."""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from data_utils.cli import register  # noqa: F401 - the CLI module must import with remote support
from data_utils.errors import DataError
from data_utils.loader import build_loader
from data_utils.remote import expand, is_url, shard_file_name
from data_utils.shards import Manifest, ShardInfo

SETTINGS = dict(batch_size=4, num_epochs=2, shuffle_buffer=8, num_workers=0)


def _batches(dataset: str, **kwargs) -> list[dict]:
    """Every batch of two epochs of one dp rank of two (shard order and shuffle seeded)."""
    return list(build_loader(dataset, 1, 2, **{**SETTINGS, **kwargs}))


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for name in ("tokens", "labels", "position_ids"):
            assert torch.equal(x[name], y[name])


def _relist(dataset: str, out: Path, locate) -> str:  # noqa: ANN001
    """A dataset.json in `out` whose shards are the URLs locate(local path) of `dataset`'s shards."""
    m = Manifest.load(dataset)
    m.shards = [ShardInfo(locate(path), s.samples) for path, s in zip(m.shard_paths(), m.shards)]
    out.mkdir()
    m.save(str(out))
    return str(out)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # noqa: ANN002
        pass

    def do_GET(self) -> None:  # a path under /cut/ sends its headers, then half the body, then hangs up
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        data = Path(self.directory, self.path[len("/cut/"):]).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def http_root():  # noqa: ANN201
    """Factory: serve a folder on 127.0.0.1 (an ephemeral port) for the test; returns the base URL."""
    servers = []

    def serve(folder: str) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=folder))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_url_helpers():
    assert is_url("pipe:cat x.tar") and is_url("https://h/x.tar") and is_url("s3://b/x.tar")
    assert not is_url("/data/x.tar") and not is_url("file:///data/x.tar") and not is_url("data-000000.tar")
    assert expand("pipe:aws s3 cp s3://b/d-{000..002}.tar -") == [f"pipe:aws s3 cp s3://b/d-00{i}.tar -" for i in range(3)]
    assert shard_file_name("pipe:aws s3 cp s3://bucket/ds/data-000007.tar -") == "data-000007.tar"
    assert shard_file_name("https://h/ds/data-000007.tar?sig=1") == "data-000007.tar"
    assert shard_file_name("/x/data-000007.tar") == "data-000007.tar"


def test_pipe_cat_yields_the_local_batches_and_resumes(token_dataset, tmp_path):
    local = token_dataset(n=60, per_shard=10)
    piped = _relist(local, tmp_path / "piped", lambda p: f"pipe:cat {p}")
    reference = _batches(local)
    _same(_batches(piped), reference)
    # exact resume works across the two: a state saved reading locally continues reading through pipes
    first = build_loader(local, 1, 2, **SETTINGS)
    it = iter(first)
    for _ in range(3):
        next(it)
    resumed = build_loader(piped, 1, 2, **SETTINGS)
    resumed.load_state_dict(first.state_dict())
    _same(list(resumed), reference[3:])


def test_manifest_read_by_pipe_places_shards_beside_it(token_dataset):
    local = token_dataset(n=40, per_shard=10)
    url = f"pipe:cat {os.path.join(local, 'dataset.json')}"
    m = Manifest.load(url)
    assert m.shard_paths()[0] == f"pipe:cat {os.path.join(local, 'data-000000.tar')}"
    _same(_batches(url), _batches(local))


def test_http_server_yields_the_local_batches(token_dataset, http_root):
    local = token_dataset(n=60, per_shard=10)
    base = http_root(local)
    m = Manifest.load(base + "dataset.json")
    assert m.shard_paths()[0] == base + "data-000000.tar"
    _same(_batches(base + "dataset.json"), _batches(local))
    # workers stream too (each opens its own URLs)
    _same(_batches(base + "dataset.json", num_workers=2), _batches(local, num_workers=2))


def _cut_copy(local: str, out: Path, shard: int, size: int) -> str:
    """A local copy of the dataset with shard `shard` cut to `size` bytes (the reference for a cut stream)."""
    shutil.copytree(local, out)
    name = Manifest.load(local).shards[shard].name
    data = (out / name).read_bytes()
    (out / name).write_bytes(data[:size])
    return str(out)


def test_stream_cut_mid_shard_is_a_fault_like_a_truncated_file(token_dataset, tmp_path, caplog):
    local = token_dataset(n=60, per_shard=10)
    shard = Manifest.load(local).shard_paths()[2]
    size = os.path.getsize(shard) // 2
    piped = _relist(local, tmp_path / "cut", lambda p: f"pipe:head -c {size} {p}" if p == shard else f"pipe:cat {p}")
    reference = _cut_copy(local, tmp_path / "truncated", 2, size)
    cut_loader = build_loader(piped, 0, 1, **SETTINGS)
    ref_loader = build_loader(reference, 0, 1, **SETTINGS)
    _same(list(cut_loader), list(ref_loader))
    assert cut_loader.faults == ref_loader.faults == 2  # the shard is read once per epoch
    assert "data-000002.tar" in caplog.text and "kept" in caplog.text
    with pytest.raises(DataError, match="data faults"):
        list(build_loader(piped, 0, 1, **{**SETTINGS, "max_faults": 1}))


def test_failing_command_is_a_fault_even_with_whole_bytes(token_dataset, tmp_path):
    local = token_dataset(n=40, per_shard=10)
    shard = Manifest.load(local).shard_paths()[1]
    failing = _relist(local, tmp_path / "fail", lambda p: f"pipe:cat {p}; exit 3" if p == shard else f"pipe:cat {p}")
    loader = build_loader(failing, 0, 1, **{**SETTINGS, "num_epochs": 1})
    keys = [k for b in loader for k in b["keys"]]
    # the non-zero exit is a fault even though the bytes were whole; the other shards arrive in full, once
    assert loader.faults == 1 and len(set(keys)) == len(keys)
    others = {f"data-{i // 10:06d}/s{i:05d}" for i in range(40) if i // 10 != 1}
    assert {k for k in keys if not k.startswith("data-000001/")} == others
    missing = _relist(local, tmp_path / "missing", lambda p: f"pipe:cat {p}.gone")
    with pytest.raises(DataError, match="data faults"):
        list(build_loader(missing, 0, 1, **{**SETTINGS, "max_faults": 3}))


def test_http_cut_mid_body_is_a_fault(token_dataset, tmp_path, http_root):
    local = token_dataset(n=40, per_shard=10)
    base = http_root(local)
    names = [s.name for s in Manifest.load(local).shards]
    cut = _relist(local, tmp_path / "http", lambda p: base + ("cut/" if p.endswith(names[3]) else "") + shard_file_name(p))
    loader = build_loader(cut, 0, 1, **{**SETTINGS, "num_epochs": 1})
    keys = [k for b in loader for k in b["keys"]]
    assert loader.faults == 1 and 30 <= len(keys) < 40


def test_data_info_verify_reads_urls(token_dataset, tmp_path, http_root, capsys):
    from megatron_cogview.cli import main

    local = token_dataset(n=40, per_shard=10)
    base = http_root(local)
    assert main(["data-info", base + "dataset.json", "--verify"]) == 0
    assert "all shards verified" in capsys.readouterr().out
    shard = Manifest.load(local).shard_paths()[1]
    piped = _relist(local, tmp_path / "cut", lambda p: f"pipe:head -c 5000 {p}" if p == shard else f"pipe:cat {p}")
    assert main(["data-info", piped, "--verify"]) == 2
    out = capsys.readouterr()
    assert "BAD pipe:head -c 5000" in out.out and "damaged" in out.err


def test_training_accepts_a_dataset_by_url(token_dataset, http_root):
    from megatron_cogview.commands.pretrain import _manifest, data_fingerprint

    local = token_dataset(n=40, per_shard=10)
    url = http_root(local) + "dataset.json"
    assert _manifest([url]).to_dict() == Manifest.load(local).to_dict()
    assert data_fingerprint([url], None) == data_fingerprint([url], None) != data_fingerprint([local], None)


def test_unreadable_manifest_url_and_url_out_are_one_line_errors(tokenizers, tmp_path, capsys):
    from megatron_cogview.cli import main

    assert main(["data-info", "pipe:exit 3"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["preprocess", str(tmp_path), "--text-tokenizer", tokenizers[0], "--image-tokenizer", tokenizers[1],
                 "--out", "s3://bucket/ds"]) == 2
    err = capsys.readouterr().err
    assert "is a URL" in err and err.count("\n") == 1
