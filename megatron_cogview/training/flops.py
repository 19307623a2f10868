"""Model FLOPs and MFU: an explicit count per token, and a peak table keyed on exact GPU names."""
from __future__ import annotations

from megatron_cogview.config import ModelConfig

# Dense half-precision (bf16/fp16) tensor-core peaks in TFLOP/s, by torch.cuda.get_device_name().
# Sparsity figures are not used. fp32 runs (TF32 matmuls) are measured against half of these.
PEAK_TFLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.4,  # SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.4,  # SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA L40S": 362.05,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,
    "Tesla V100-SXM2-32GB": 125.0,
    "Tesla V100-SXM2-16GB": 125.0,
    "Tesla V100-PCIE-32GB": 112.0,
    "Tesla V100-PCIE-16GB": 112.0,
}


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward = 3 x forward) of one token in a sequence of `seq_len` tokens.

    Forward, per layer: QKV 2*3h^2, attention output 2h^2, MLP 2*2*h*ffn, scores and weighted sum
    2*2*s*h (the full s x s product, as Megatron counts it); plus the output embedding 2*h*V.
    Activation recomputation is not counted (model FLOPs, not hardware FLOPs)."""
    h, ffn, s = config.hidden_size, config.ffn_size, seq_len
    layer = 6 * h * h + 2 * h * h + 4 * h * ffn + 4 * s * h
    return 3 * (config.num_layers * layer + 2 * h * config.vocab_size)


def peak_tflops(device_name: str, precision: str, override: float = 0.0) -> float | None:
    """Peak TFLOP/s for MFU: `override` if given, else the table's exact entry (None when unknown)."""
    if override > 0:
        return override
    peak = PEAK_TFLOPS.get(device_name)
    if peak is None:
        return None
    return peak / 2 if precision == "fp32" else peak
