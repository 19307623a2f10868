"""LayerNorm, optionally with PB-relax: the input is divided by its detached row max first.

LN(x) == LN(c * x) for any c > 0 (up to eps), so rescaling every row to a max |x| of `target`
keeps the statistics in range where hidden values reach 1e4-1e5 (CogView's deep layers),
which would overflow a half-precision variance (x^2 > 65504 for |x| > 256).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.Module):
    """LayerNorm over the last dim with an optional PB-relax input rescale."""

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-5,
        *,
        pb_relax: bool = False,
        target_max: float = 8.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.eps, self.pb_relax, self.target_max = eps, pb_relax, target_max
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pb_relax:
            # The scale in fp32: in fp16, target / a row max below ~1.2e-4 overflows to inf (and rounds).
            wide = torch.promote_types(x.dtype, torch.float32)
            row_max = x.detach().abs().amax(dim=-1, keepdim=True).to(wide)  # [b, s, 1]
            scale = self.target_max / row_max.clamp_min(1e-6)
            x = x * scale if x.dtype == wide else (x.to(wide) * scale).to(x.dtype)
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # Mixed precision: autocast would run LayerNorm in fp32 and hand the next matmul an fp32 tensor to
            # cast back. Sandwich-LN has four LayerNorms per layer, so instead normalise half-precision inputs
            # in place (the kernel accumulates in fp32) and return the autocast dtype directly.
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                if x.dtype == dtype:
                    return F.layer_norm(x, (x.size(-1),), self.weight.to(dtype), self.bias.to(dtype), self.eps)
                return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps).to(dtype)
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, pb_relax={self.pb_relax}"
