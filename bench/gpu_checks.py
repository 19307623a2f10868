"""In-process checks of bench/gpu_validate.py: machine ceilings, kernels, generation speed, tp on one device.

Each function takes the `Sizes` of the run (full GPU sizes or the CPU `--tiny` ones) and returns a dict of
plain values; `ok` is False when the check found a defect.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from megatron_cogview.config import ModelConfig, model_preset
from megatron_cogview.generation import GenerationConfig, generate_image_codes
from megatron_cogview.generation.decoding import inference
from megatron_cogview.model import CogViewModel
from megatron_cogview.model.attention import BLOCK_PATH_LABEL
from megatron_cogview.parallel import ParallelState


@dataclass(frozen=True)
class Sizes:
    """How big each stage runs: the GPU defaults, or `tiny()` for CPU smoke runs."""

    device: str = "cuda"
    gemm_n: int = 8192
    copy_mib: int = 1024
    loss_tokens: int = 2048
    loss_hidden: int = 1024
    gen_preset: str = "cogview-4b"
    gen_layers: int = 48
    gen_tokens: int = 1024
    gen_batches: tuple[int, ...] = (1, 8)
    tp_steps: int = 3

    @classmethod
    def tiny(cls) -> "Sizes":
        return cls(device="cpu", gemm_n=256, copy_mib=16, loss_tokens=64, loss_hidden=64, gen_preset="tiny",
                   gen_layers=2, gen_tokens=16, gen_batches=(1, 2), tp_steps=2)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeat: int = 5) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


# ---- 1. environment ---------------------------------------------------------------------------------
def environment(s: Sizes) -> dict[str, Any]:
    """Versions, device name, measured bf16 GEMM TFLOP/s and device copy GB/s."""
    import deepspeed

    out: dict[str, Any] = {"torch": torch.__version__, "deepspeed": deepspeed.__version__,
                           "cuda": torch.version.cuda, "device": s.device}
    if s.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
    n = s.gemm_n
    a = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=s.device, dtype=torch.bfloat16)
    sec = timed(lambda: torch.matmul(a, b), s.device)
    out["bf16_gemm_tflops"] = float(f"{2 * n**3 / sec / 1e12:.4g}")
    numel = s.copy_mib * 2**20 // 4
    src = torch.empty(numel, device=s.device, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    sec = timed(lambda: dst.copy_(src), s.device)
    out["copy_gb_s"] = float(f"{2 * src.numel() * 4 / sec / 1e9:.4g}")  # read + write
    out["ok"] = True
    return out


# ---- 2. kernels -----------------------------------------------------------------------------------
def _sdpa_ops(fn: Callable[[], Any]) -> list[str]:
    """Names of the attention kernels that `fn` dispatched to: aten's scaled-dot-product kernels, and our
    block_causal_attention (CPU training of short or dropout sequences)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    keys = {e.key for e in prof.key_averages()}
    names = {k.replace("aten::_scaled_dot_product_", "") for k in keys
             if "scaled_dot_product" in k and k != "aten::scaled_dot_product_attention"}
    if BLOCK_PATH_LABEL in keys:
        names.add(BLOCK_PATH_LABEL.split("::")[-1])
    return sorted(names)


def _small_config(s: Sizes, **overrides: Any) -> ModelConfig:
    base = dict(num_layers=2, hidden_size=s.loss_hidden, num_attention_heads=max(1, s.loss_hidden // 64),
                vocab_size=58240, max_position_embeddings=1089, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return ModelConfig(**base)


def sdpa_backends(s: Sizes) -> dict[str, list[str]]:
    """Which SDPA kernel the model's training forward, prefill and one decode step run on."""
    model = CogViewModel(_small_config(s, vocab_size=512), ParallelState.single(), device=s.device)
    dtype = torch.bfloat16 if s.device.startswith("cuda") else torch.float32
    model = model.to(dtype)
    seq = 256 if s.device.startswith("cuda") else 32
    tokens = torch.randint(0, 512, (2, seq), device=s.device)
    out: dict[str, list[str]] = {}
    out["train"] = _sdpa_ops(lambda: model.hidden_states(tokens).float().sum().backward())
    with inference(model):
        cache = model.new_cache(2, seq + 2)
        out["prefill"] = _sdpa_ops(lambda: model.hidden_states(tokens, cache=cache))
        pos = torch.full((2, 1), seq, device=s.device, dtype=torch.long)
        out["decode"] = _sdpa_ops(lambda: model.hidden_states(tokens[:, :1], pos, cache=cache))
    return out


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def fused_loss_precision(s: Sizes, dtype: torch.dtype) -> dict[str, float]:
    """Fused LM loss and its gradients in `dtype` vs an fp64 reference, beside the unfused `dtype` path."""
    cfg = _small_config(s)
    ref = CogViewModel(cfg, ParallelState.single(), device=s.device).double()
    low = CogViewModel(cfg, ParallelState.single(), device=s.device).to(dtype)
    g = torch.Generator().manual_seed(0)
    n = s.loss_tokens
    tokens = torch.randint(0, cfg.vocab_size, (1, n), generator=g).to(s.device)
    labels = torch.randint(0, cfg.vocab_size, (1, n), generator=g).to(s.device)
    weights = torch.ones(1, n, device=s.device)

    def grads(model: CogViewModel, fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        if fused:
            loss = model.lm_loss(tokens, labels, weights).total / n
        else:
            logits = model(tokens)  # [1, n, V] in the model's dtype
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        return loss.detach(), model.word_embeddings.weight.grad.detach().clone()

    ref_loss, ref_grad = grads(ref, fused=False)
    fused_loss, fused_grad = grads(low, fused=True)
    plain_loss, plain_grad = grads(low, fused=False)
    return {"fused_loss_rel": abs(float(fused_loss) - float(ref_loss)) / float(ref_loss),
            "fused_grad_rel": _rel(fused_grad, ref_grad), "unfused_loss_rel": abs(float(plain_loss) - float(ref_loss)) / float(ref_loss),
            "unfused_grad_rel": _rel(plain_grad, ref_grad)}


def checkpointing_equal(s: Sizes) -> dict[str, float]:
    """Dropout + activation checkpointing gives the loss and gradients of the same model without it."""
    results = []
    for ckpt in (False, True):
        cfg = _small_config(s, vocab_size=512, hidden_dropout=0.1, attention_dropout=0.1, checkpoint_activations=ckpt)
        model = CogViewModel(cfg, ParallelState.single(), device=s.device).train()
        tokens = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1)).to(s.device)
        loss = model.lm_loss(tokens, tokens.roll(-1, 1), torch.ones(2, 64, device=s.device)).total
        loss.backward()
        results.append((loss.detach(), [p.grad.detach().clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    return {"loss_rel": abs(float(l1 - l0)) / abs(float(l0)), "max_grad_rel": max(_rel(a, b) for a, b in zip(g1, g0))}


def sparse_vs_dense(seq: int = 4096, heads: int = 8) -> dict[str, Any]:
    """CUDA: three-region sparse attention (FlexAttention) vs dense causal SDPA, forward + backward, bf16."""
    from megatron_cogview.model.sparse import sample_pattern, sparse_attention

    cfg = model_preset("cogview-4b", attention_kernel="sparse", sparse_backend="flex", attention_dropout=0.0,
                       max_position_embeddings=seq + 1)
    tokens = torch.randint(0, 8192, (1, seq), device="cuda")
    tokens[:, :64] = 9000
    pattern = sample_pattern(tokens, cfg, None)
    q, k, v = (torch.randn(1, heads, seq, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out: dict[str, Any] = {"seq": seq}
    for name, fn in (("dense", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
                     ("sparse_flex", lambda: sparse_attention(q, k, v, pattern))):
        torch.cuda.reset_peak_memory_stats()
        sec = timed(lambda: fn().sum().backward(), "cuda")
        out[name] = {"ms": round(1000 * sec, 2), "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return out


def kernels(s: Sizes) -> dict[str, Any]:
    """SDPA backends per phase, fused-loss precision in fp16 and bf16, checkpointing == no checkpointing."""
    out: dict[str, Any] = {"sdpa": sdpa_backends(s)}
    if s.device.startswith("cuda"):
        try:
            out["sparse_attention"] = sparse_vs_dense()
        except Exception as e:  # informative only: a FlexAttention problem must not hide the other checks
            out["sparse_attention"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    ok = True
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        r = fused_loss_precision(s, dtype)
        out[f"loss_{name}"] = {k: float(f"{v:.3g}") for k, v in r.items()}
        # the fused path may not be worse than materialising the logits in the same precision (2x slack)
        ok &= r["fused_grad_rel"] <= 2 * r["unfused_grad_rel"] + 1e-6 and r["fused_loss_rel"] <= 2 * r["unfused_loss_rel"] + 1e-6
    ck = checkpointing_equal(s)
    out["checkpointing"] = {k: float(f"{v:.3g}") for k, v in ck.items()}
    ok &= ck["loss_rel"] < 1e-6 and ck["max_grad_rel"] < 1e-5
    out["ok"] = bool(ok)
    return out


# ---- 5. generation ----------------------------------------------------------------------------------
def random_model_on_device(config: ModelConfig, device: str, dtype: torch.dtype) -> CogViewModel:
    """A model of `config`'s shape built on the meta device and filled with random weights on `device`."""
    model = CogViewModel(config, ParallelState.single(), device="meta", dtype=dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            else:
                p.normal_(0.0, config.init_std)
    return model.eval()


def generation(s: Sizes) -> dict[str, Any]:
    """Seconds per image and tokens/s of KV-cached image sampling at each batch size."""
    cuda = s.device.startswith("cuda")
    cfg = model_preset(s.gen_preset, num_layers=s.gen_layers, hidden_dropout=0.0, attention_dropout=0.0)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = random_model_on_device(cfg, s.device, dtype)
    prompt_len = min(64, cfg.max_position_embeddings - s.gen_tokens)
    out: dict[str, Any] = {"model": f"{cfg.num_layers}x{cfg.hidden_size}, vocab {cfg.vocab_size}", "dtype": str(dtype),
                           "new_tokens": s.gen_tokens, "runs": []}
    image_range = (0, min(8192, cfg.vocab_size))
    modes = {"eager": {}, "cuda_graphs": {"cuda_graphs": True}} if cuda else {"eager": {}, "static": {"static_shapes": True}}
    ok = True
    for b in s.gen_batches:
        prompts = list(torch.randint(0, cfg.vocab_size, (b, prompt_len)))
        codes = {}
        for mode, flags in modes.items():
            config = GenerationConfig(top_k=200, seed=1, max_inference_batch_size=b, **flags)
            sec = timed(lambda: codes.__setitem__(mode, generate_image_codes(model, prompts, s.gen_tokens, image_range,
                                                                            config)), s.device, repeat=2)
            out["runs"].append({"batch": b, "mode": mode, "s_per_image": round(sec / b, 4),
                                "tokens_per_s": round(b * s.gen_tokens / sec, 1)})
        # bf16 on a GPU may break near-ties differently; fp32 on CPU must agree token for token
        same = [torch.equal(codes["eager"], c) for c in codes.values()]
        out.setdefault("same_tokens", []).append(all(same))
        ok &= all(same) or cuda
    out["ok"] = bool(ok) and all(math.isfinite(r["tokens_per_s"]) for r in out["runs"])
    if cuda:
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


# ---- 7. tp = 2 on one device over gloo ---------------------------------------------------------------
def _tp_losses(state: ParallelState, device: str, steps: int) -> list[float]:
    cfg = model_preset("tiny", hidden_dropout=0.0, attention_dropout=0.0)
    model = CogViewModel(cfg, state, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=g).to(device)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = model.lm_loss(tokens, tokens.roll(-1, 1), torch.ones(4, 32, device=device)).total / tokens.numel()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _tp_worker(rank: int, port: int, device: str, steps: int, result: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        losses = _tp_losses(ParallelState.build(tp_size=2), device, steps)
        if rank == 0:
            with open(result, "w") as f:
                f.write(" ".join(repr(x) for x in losses))
    finally:
        dist.destroy_process_group()


def tensor_parallel_one_device(s: Sizes) -> dict[str, Any]:
    """tp=2 (two processes, gloo, both on the same device) vs tp=1: the same losses within fp32 rounding."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "losses.txt")
        mp.start_processes(_tp_worker, args=(port, s.device, s.tp_steps, result), nprocs=2, start_method="spawn")
        tp2 = [float(x) for x in open(result).read().split()]
    tp1 = _tp_losses(ParallelState.single(), s.device, s.tp_steps)
    worst = max(abs(a - b) / abs(b) for a, b in zip(tp2, tp1))
    return {"tp1": [round(x, 6) for x in tp1], "tp2": [round(x, 6) for x in tp2], "max_rel": float(f"{worst:.3g}"),
            "ok": worst < 1e-4}
