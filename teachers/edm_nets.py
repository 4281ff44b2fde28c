"""EDM's pixel networks, written from the papers: DDPM++/NCSN++ (`SongUNet`; Song et al. 2021) and ADM
(`DhariwalUNet`; Dhariwal & Nichol 2021) as Karras et al. 2022 (EDM) configured them, and EDM2's magnitude-preserving
UNet (`EDM2UNet`, NVlabs' `UNet`; Karras et al. 2024).

Every module and parameter has the name NVlabs' state dicts use (`model.enc.32x32_block0.conv0.weight`, ...), so a
converted pickle (teachers/convert.py) loads with `load_state_dict(strict=True)`. Our own code; only the names and
the arithmetic are shared with the reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_TYPES, DECODER_TYPES, EMBEDDING_TYPES = ("standard", "skip", "residual"), ("standard", "skip"), ("positional", "fourier")


def resample_kernel(taps: list[float]) -> torch.Tensor:
    """The separable FIR filter of up/downsampling as a (1, 1, k, k) kernel summing to 1 ([1, 1]: box; [1, 3, 3, 1]: NCSN++)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Linear(nn.Module):
    """y = x W^T + b with EDM's parameter layout."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Module):
    """A k x k convolution (k = 0: none, resampling only) with optional 2x FIR up- or downsampling before it; `fused`
    does the convolution first when downsampling (NCSN++'s residual encoder)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: list[float] = (1, 1), fused_resample: bool = False):
        super().__init__()
        assert not (up and down)
        self.in_channels, self.out_channels, self.up, self.down, self.fused_resample = in_channels, out_channels, up, down, fused_resample
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        if self.weight is not None:
            nn.init.xavier_uniform_(self.weight)
        self.register_buffer("resample_filter", resample_kernel(list(resample_filter)) if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile(self.out_channels, 1, 1, 1), groups=self.out_channels, stride=2)
        else:
            if self.up:  # the filter x4 keeps the mean of the zero-stuffed image
                x = F.conv_transpose2d(x, (f * 4).tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """GroupNorm with at most 32 groups and at least 4 channels a group (EDM's rule for small widths)."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups, self.eps = min(num_groups, num_channels // min_channels_per_group), eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """A residual block conditioned on the embedding (scale-shift for ADM, added bias for DDPM++), optionally
    resampling, optionally followed by self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64, dropout: float = 0.0,
                 skip_scale: float = 1.0, eps: float = 1e-5, resample_filter: list[float] = (1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.dropout, self.skip_scale, self.adaptive_scale = in_channels, out_channels, dropout, skip_scale, adaptive_scale
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, **resample)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self.attention(self.qkv(self.norm2(x)), x.shape)) + x) * self.skip_scale
        return x

    def attention(self, qkv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Softmax attention over the pixels, heads on channels (the layout NVlabs' qkv weights are trained for:
        per head, channels grouped as (head channel, q/k/v))."""
        b, c, h, w = shape
        q, k, v = qkv.reshape(b * self.num_heads, c // self.num_heads, 3, h * w).unbind(2)  # (n, c_head, pixels) each
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # softmax(q k / sqrt(c))
        return a.transpose(1, 2).reshape(shape)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of the noise label, [cos, sin] (endpoint: the last frequency is 1 / max_positions)."""

    def __init__(self, num_channels: int, max_positions: int = 10_000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise label (NCSN++), frequencies stored as a buffer."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier embedding, residual encoder, [1, 3, 3, 1]
    filter) as in EDM's CIFAR-10 networks. F(x, c_noise, labels) -> (B, out_channels, R, R)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0, augment_dim: int = 0,
                 model_channels: int = 128, channel_mult: list[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: list[int] = (16,), dropout: float = 0.10, label_dropout: float = 0,
                 embedding_type: str = "positional", channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter: list[float] = (1, 1)):
        super().__init__()
        assert embedding_type in EMBEDDING_TYPES and encoder_type in ENCODER_TYPES and decoder_type in DECODER_TYPES
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels, 3)
                cout = model_channels
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True)
                    caux = cout
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, model_channels * mult, attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                attention = idx == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skips.pop(), model_channels * mult, attention=attention, **block)
                cout = model_channels * mult
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True, resample_filter=resample_filter)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    @property
    def time_embedding(self) -> nn.Module:
        """The layer whose output is the noise-level embedding, before the label is added."""
        return self.map_layer1

    def embedding(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [sin, cos], the order DDPM++ was trained with
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels * math.sqrt(self.map_label.in_features))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.embedding(noise_labels, class_labels)
        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM as in EDM's ImageNet-64 network. F(x, c_noise, labels) -> (B, out_channels, R, R)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0, augment_dim: int = 0,
                 model_channels: int = 192, channel_mult: list[int] = (1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions: list[int] = (32, 16, 8), dropout: float = 0.10,
                 label_dropout: float = 0):
        super().__init__()
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(cout, model_channels * mult, 3)
                cout = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cout, model_channels * mult, attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cout + skips.pop(), model_channels * mult, attention=res in attn_resolutions, **block)
                cout = model_channels * mult
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    @property
    def time_embedding(self) -> nn.Module:
        """The layer whose output is the noise-level embedding, before the label is added."""
        return self.map_layer1

    def embedding(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.map_layer1(F.silu(self.map_layer0(self.map_noise(noise_labels))))
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels)
        return F.silu(emb)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.embedding(noise_labels, class_labels)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


# EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models"): every layer keeps
# the magnitudes of its activations and weights (config G), so nothing needs normalisation layers or biases.

def normalize(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x over its norm along dim (all but the first by default), the norm scaled to an average of 1 per element."""
    dim = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU scaled to unit output magnitude for unit-variance input (EDM2 eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 - t) a + t b, rescaled to keep unit magnitude."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation weighted (1 - t) : t and rescaled to keep unit magnitude, per channel count."""
    na, nb = a.shape[dim], b.shape[dim]
    c = math.sqrt((na + nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([c / math.sqrt(na) * (1 - t) * a, c / math.sqrt(nb) * t * b], dim=dim)


def fir_resample(x: torch.Tensor, taps: list[float], mode: str) -> torch.Tensor:
    """2x FIR up- or downsampling per channel ('keep': none)."""
    if mode == "keep":
        return x
    f = resample_kernel(taps).to(x.dtype).to(x.device).tile(x.shape[1], 1, 1, 1)
    pad = (len(taps) - 1) // 2
    if mode == "down":
        return F.conv2d(x, f, groups=x.shape[1], stride=2, padding=pad)
    return F.conv_transpose2d(x, f * 4, groups=x.shape[1], stride=2, padding=pad)


class MPFourier(nn.Module):
    """cos(2 pi (f x + phase)) * sqrt(2): a unit-magnitude Fourier embedding of the noise label."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """A convolution (or, with kernel [], a linear layer) whose weights are normalised per output channel; in training
    the stored weights are normalised too (EDM2's forced weight normalisation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: list[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain=1) -> torch.Tensor:
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = (normalize(w) * (gain / math.sqrt(w[0].numel()))).to(x.dtype)
        return x @ w.t() if w.ndim == 2 else F.conv2d(x, w, padding=w.shape[-1] // 2)


class Block(nn.Module):
    """EDM2's residual block: encoder flavour (skip projection and pixel norm first) or decoder flavour, the embedding
    as a multiplicative gain, optional attention, magnitude-preserving sums, clipped activations."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc", resample_mode: str = "keep",
                 resample_filter: list[float] = (1, 1), attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0, res_balance: float = 0.3, attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        self.out_channels, self.flavor, self.resample_filter, self.resample_mode = out_channels, flavor, list(resample_filter), resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = fir_resample(x, self.resample_filter, self.resample_mode)
        if self.flavor == "enc":
            x = normalize(x if self.conv_skip is None else self.conv_skip(x), dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        gain = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * gain[:, :, None, None].to(y.dtype))
        y = self.conv_res1(F.dropout(y, p=self.dropout, training=self.training))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attn_proj(self.attention(self.attn_qkv(x), x.shape)), t=self.attn_balance)
        return x if self.clip_act is None else x.clip(-self.clip_act, self.clip_act)

    def attention(self, qkv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Cosine attention: q, k, v pixel-normalised per head (the layout of EDM2's qkv weights)."""
        b, c, h, w = shape
        q, k, v = normalize(qkv.reshape(b, self.num_heads, -1, 3, h * w), dim=2).unbind(3)  # (b, heads, c_head, pixels)
        a = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        return a.transpose(2, 3).reshape(shape)


class EDM2UNet(nn.Module):
    """EDM2's UNet (NVlabs' `UNet`) for pixel images. F(x, c_noise, labels) -> (B, img_channels, R, R)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0, model_channels: int = 192,
                 channel_mult: list[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None, channel_mult_emb: int | None = None,
                 num_blocks: int = 3, attn_resolutions: list[int] = (16, 8), label_balance: float = 0.5,
                 concat_balance: float = 0.5, **block_kwargs):
        super().__init__()
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = in_channels + 1  # a constant channel of ones gives the convolutions a bias
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(cout, channels, [3, 3])
                cout = channels
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f"{res}x{res}_block{idx}"] = Block(cout, channels, cemb, flavor="enc", attention=res in attn_resolutions, **block_kwargs)
                cout = channels
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, cemb, flavor="dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs)
            for idx in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{idx}"] = Block(cout + skips.pop(), channels, cemb, flavor="dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
                cout = channels
        self.out_conv = MPConv(cout, out_channels, [3, 3])

    @property
    def time_embedding(self) -> nn.Module:
        """The layer whose output is the noise-level embedding, before the label is mixed in."""
        return self.emb_noise

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            emb = mp_sum(emb, self.emb_label(class_labels * math.sqrt(class_labels.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if "conv" in name else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


NETWORKS["EDM2UNet"] = EDM2UNet
