"""Convolutional VQ-VAE: encoder (stride-2 stages), EMA quantiser, mirrored decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokenization.vqvae.config import VQVAEConfig
from tokenization.vqvae.quantizer import EMAQuantizer


class ResBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))) (VQ-VAE-2 residual block)."""

    def __init__(self, channels: int, res_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, res_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(res_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """Image [b, c, H, W] -> latents [b, code_dim, H/ds, W/ds].

    residual: (conv4x4/s2, ReLU) x n, conv3x3, residual blocks, ReLU, conv1x1.
    cogview-original: (conv4x4/s2, ReLU) x n, conv1x1 (no 3x3 conv, no residual blocks)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        ch = config.hidden_channels
        down: list[nn.Module] = []
        for i in range(config.num_downsamples):
            down += [nn.Conv2d(config.in_channels if i == 0 else ch, ch, 4, stride=2, padding=1), nn.ReLU()]
        self.down = nn.Sequential(*down)
        original = config.architecture == "cogview-original"
        self.conv_mid: nn.Module = nn.Identity() if original else nn.Conv2d(ch, ch, 3, padding=1)
        self.res = nn.Sequential(*[ResBlock(ch, config.res_channels) for _ in range(config.num_res_blocks)])
        self.conv_out = nn.Conv2d(ch, config.code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.res(self.conv_mid(self.down(x)))
        return self.conv_out(F.relu(h))


class Decoder(nn.Module):
    """Quantised latents [b, code_dim, h, w] -> image [b, c, h*ds, w*ds] (mirror of Encoder).

    residual: conv3x3, residual blocks, (ReLU, convT4x4/s2) x n (the last one outputs the image channels).
    cogview-original: convT4x4/s2, (ReLU, convT4x4/s2) x (n - 1), ReLU, conv1x1 to the image channels."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        ch, n = config.hidden_channels, config.num_downsamples
        up: list[nn.Module] = [nn.ReLU()]
        if config.architecture == "cogview-original":
            self.conv_in: nn.Module = nn.ConvTranspose2d(config.code_dim, ch, 4, stride=2, padding=1)
            for _ in range(n - 1):
                up += [nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1), nn.ReLU()]
            up.append(nn.Conv2d(ch, config.in_channels, 1))
        else:
            self.conv_in = nn.Conv2d(config.code_dim, ch, 3, padding=1)
            for i in range(n):
                last = i == n - 1
                up.append(nn.ConvTranspose2d(ch, config.in_channels if last else ch, 4, stride=2, padding=1))
                if not last:
                    up.append(nn.ReLU())
        self.res = nn.Sequential(*[ResBlock(ch, config.res_channels) for _ in range(config.num_res_blocks)])
        self.up = nn.Sequential(*up)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.up(self.res(self.conv_in(q)))


@dataclass
class VQVAEOutput:
    """Everything one training forward produces."""

    reconstruction: torch.Tensor  # [b, c, H, W] normalised pixel space
    codes: torch.Tensor  # [b, h, w]
    loss: torch.Tensor  # reconstruction_loss + beta * commitment_loss
    reconstruction_loss: torch.Tensor  # MSE in normalised space
    commitment_loss: torch.Tensor
    counts: torch.Tensor  # [codebook_size]


class VQVAE(nn.Module):
    """VQ-VAE image tokenizer: encode -> codes [b, h, w], decode codes -> images."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = EMAQuantizer(
            config.codebook_size,
            config.code_dim,
            decay=config.ema_decay,
            eps=config.ema_eps,
            dead_code_threshold=config.dead_code_threshold,
        )
        self.decoder = Decoder(config)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        """Reconstruct normalised images x [b, c, H, W]; updates the codebook in training mode."""
        z = self.encoder(x)
        q = self.quantizer(z)
        recon = self.decoder(q.quantized)
        rec_loss = F.mse_loss(recon.float(), x.float())
        loss = rec_loss + self.config.commitment_beta * q.commitment_loss
        return VQVAEOutput(recon, q.codes, loss, rec_loss, q.commitment_loss, q.counts)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes [b, H/ds, W/ds] of normalised images x [b, c, H, W] (no codebook update)."""
        z = self.encoder(x)  # [b, d, h, w]
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # [b, d, h, w] -> [b*h*w, d]
        return self.quantizer.nearest(flat).view(b, h, w)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Normalised images [b, c, h*ds, w*ds] of codes [b, h, w]."""
        q = self.quantizer.lookup(codes)
        return self.decoder(q.to(next(self.decoder.parameters()).dtype))
