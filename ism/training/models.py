"""Networks: DiT (adaLN-Zero), a small FiLM conv U-Net for CPU, and an MLP for 2-D points.

Every model is `forward(x, t, k, y, w) -> Tensor` shaped like x, conditioned on c = E_t(t) + E_k(k) + E_y(y)
[+ E_w(w) when built for intrinsic guidance], with a zero-initialised output layer (initial output 0). Built for
method.name=meanflow, k carries the continuous step size d (float) and E_d replaces E_k.
`MODELS` is the registry (its keys are the CLI choices of model.name); `build_model(cfg, data)` builds one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ism.conf.config import Config
from ism.errors import ConfigError, suggest
from ism.conf.registry import IMAGE_KINDS, MODELS, ModelSpec



# ----------------------------------------------------------------------------------------------- conditioning
def sincos_features(v: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[B] -> [B, dim] cos/sin features at geometrically spaced frequencies (DiT convention)."""
    half = dim // 2
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32  # float64 for derivative checks in tests
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=v.device, dtype=dtype) / half)
    arg = v.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)


class ScalarEmbedder(nn.Module):
    """Sinusoidal features of a scalar (times `scale`), then Linear-SiLU-Linear."""

    def __init__(self, width: int, scale: float, freq_dim: int = 256):
        super().__init__()
        # Why a scale: t and w live in [0, 1] / [0, 20]; without it most sin/cos channels would be constant.
        self.scale, self.freq_dim = scale, freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(sincos_features(v * self.scale, self.freq_dim))


class Conditioning(nn.Module):
    """c = E_t(t) + E_k(k) + E_y(y) [+ E_w(w)]; the label table has num_classes + 1 rows (last = null).

    continuous_step: the step input is a continuous step size d in [0, 1] (MeanFlow's t - r) embedded by E_d in
    place of the level embedding E_k; built only then, so level-conditioned models keep their weights and outputs.
    """

    def __init__(self, width: int, num_classes: int, use_w: bool, continuous_step: bool = False,
                 time_scale: float = 1000.0, w_scale: float = 100.0):
        super().__init__()
        # t in [0, 1], resolution 1/128 must be visible. MeanFlow differentiates the network in t and d (a JVP), and
        # at scale 1000 the top channels turn over every few 1e-3 of t, so its models take a smaller time_scale.
        self.t_embed = ScalarEmbedder(width, scale=time_scale)
        if continuous_step:
            self.d_embed = ScalarEmbedder(width, scale=time_scale)  # d in [0, 1], embedded like t
        else:
            self.k_embed = ScalarEmbedder(width, scale=1.0)  # integer level: unit spacing is already distinct
        self.continuous_step = continuous_step
        self.y_embed = nn.Embedding(num_classes + 1, width)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        # w_scale: model.w_embed_scale (why it is a key: docs/embedded-defaults.md, "w-embedding scale")
        self.w_embed = ScalarEmbedder(width, scale=w_scale) if use_w else None

    def forward(self, t, k, y, w=None) -> torch.Tensor:
        step = self.d_embed(k) if self.continuous_step else self.k_embed(k)
        c = self.t_embed(t) + step + self.y_embed(y)
        if self.w_embed is not None:
            if w is None:
                raise ValueError("this model was built for intrinsic guidance (use_w): pass w")
            c = c + self.w_embed(w)
        return c


def _zero(m: nn.Module) -> nn.Module:
    """Zero a layer's weight and bias (adaLN-Zero / FiLM-zero: the block starts as identity or outputs 0)."""
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


# ----------------------------------------------------------------------------------------------- DiT
def pos_embed_2d(width: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed 2-D sin/cos position table [gh*gw, width] (half the channels per axis)."""
    yy, xx = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    q = width // 2
    return torch.cat([sincos_features(yy.flatten(), q), sincos_features(xx.flatten(), q)], dim=1)


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Pre-LN transformer block with adaLN-Zero shift/scale/gate for attention and MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(hidden, width))
        self.ada = _zero(nn.Linear(width, 6 * width))

    def forward(self, x, c):
        b, n, d = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = self.qkv(_modulate(self.norm1(x), sh1, sc1)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + g1[:, None] * self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class DiT(nn.Module):
    """Patchify -> adaLN-Zero blocks -> final adaLN layer -> unpatchify."""

    def __init__(self, shape, num_classes, use_w, width, depth, heads, patch, mlp_ratio=4.0, dropout=0.0,
                 continuous_step=False, time_scale=1000.0, w_scale=100.0):
        super().__init__()
        c, h, w = shape
        self.patch, self.channels = patch, c
        self.cond = Conditioning(width, num_classes, use_w, continuous_step, time_scale, w_scale)
        self.embed = nn.Conv2d(c, width, patch, stride=patch)
        self.register_buffer("pos", pos_embed_2d(width, h // patch, w // patch), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = _zero(nn.Linear(width, 2 * width))
        self.out = _zero(nn.Linear(width, patch * patch * c))

    def forward(self, x, t, k, y, w=None):
        b, c, h, wd = x.shape
        p = self.patch
        cvec = self.cond(t, k, y, w)
        z = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        for blk in self.blocks:
            z = blk(z, cvec)
        shift, scale = self.ada(F.silu(cvec)).chunk(2, dim=-1)
        z = self.out(_modulate(self.norm(z), shift, scale))                    # [B, N, p*p*C]
        z = z.view(b, h // p, wd // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return z.reshape(b, c, h, wd)


# ----------------------------------------------------------------------------------------------- U-Net
class ResBlock(nn.Module):
    """conv -> FiLM(c) -> SiLU -> conv, residual; optional GroupNorm (slow on CPU, hence optional)."""

    def __init__(self, cin, cout, emb, norm_groups, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(norm_groups, cin), cin) if norm_groups else nn.Identity()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(min(norm_groups, cout), cout) if norm_groups else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))               # block starts as its skip path
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(self.drop(h))


class UNet(nn.Module):
    """A small FiLM-conditioned conv U-Net: `blocks` ResBlocks at width `channels[i]` on resolution H / 2^i.

    Channel changes happen in the strided down-conv and the transposed up-conv, where they are cheapest (CPU time
    scales with the channels used at full resolution; docs/embedded-model.md).
    """

    def __init__(self, shape, num_classes, use_w, channels=(32, 64), blocks=1, emb=128, norm_groups=0, patch=1,
                 dropout=0.0, continuous_step=False, time_scale=1000.0, w_scale=100.0):
        super().__init__()
        c, n = shape[0], len(channels)
        self.levels, self.blocks, self.patch = n, blocks, patch
        self.cond = Conditioning(emb, num_classes, use_w, continuous_step, time_scale, w_scale)
        # patch > 1: space-to-depth stem (cheaper); no registered variant uses it: on MNIST its samples speckle
        self.inp = nn.Conv2d(c * patch * patch, channels[0], 3, padding=1)
        res = lambda ci, co: ResBlock(ci, co, emb, norm_groups, dropout)
        self.down = nn.ModuleList(nn.ModuleList(res(ch, ch) for _ in range(blocks)) for ch in channels)
        self.pool = nn.ModuleList(nn.Conv2d(channels[i], channels[i + 1], 3, stride=2, padding=1) for i in range(n - 1))
        self.mid = res(channels[-1], channels[-1])
        self.up = nn.ModuleList(nn.ModuleList(res(2 * ch, ch) for _ in range(blocks)) for ch in channels)
        self.unpool = nn.ModuleList(nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in range(n - 1))
        self.out_norm = nn.GroupNorm(min(norm_groups, channels[0]), channels[0]) if norm_groups else nn.Identity()
        self.out = _zero(nn.Conv2d(channels[0], c * patch * patch, 3, padding=1))

    def forward(self, x, t, k, y, w=None):
        c = F.silu(self.cond(t, k, y, w))
        h, skips = self.inp(F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x), []
        for i in range(self.levels):
            for blk in self.down[i]:
                h = blk(h, c)
                skips.append(h)
            if i < self.levels - 1:
                h = self.pool[i](h)
        h = self.mid(h, c)
        for i in reversed(range(self.levels)):
            for blk in self.up[i]:
                h = blk(torch.cat([h, skips.pop()], dim=1), c)
            if i > 0:
                h = self.unpool[i - 1](h)
        h = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h


# ----------------------------------------------------------------------------------------------- MLP (2-D points)
class MLPBlock(nn.Module):
    """Residual Linear-SiLU-Linear with FiLM from c."""

    def __init__(self, width, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.film = _zero(nn.Linear(width, 3 * width))                          # shift, scale, gate (adaLN-Zero)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h, c):
        shift, scale, gate = self.film(c).chunk(3, dim=-1)
        return h + gate * self.fc2(self.drop(F.silu(self.fc1(_modulate(self.norm(h)[:, None], shift, scale)[:, 0]))))


class PointMLP(nn.Module):
    """An MLP for points [B, D] conditioned like the image models."""

    def __init__(self, shape, num_classes, use_w, width=128, depth=4, dropout=0.0, continuous_step=False,
                 time_scale=1000.0, w_scale=100.0):
        super().__init__()
        d = shape[0]
        self.cond = Conditioning(width, num_classes, use_w, continuous_step, time_scale, w_scale)
        self.inp = nn.Linear(d, width)
        self.blocks = nn.ModuleList(MLPBlock(width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.out = _zero(nn.Linear(width, d))

    def forward(self, x, t, k, y, w=None):
        c = F.silu(self.cond(t, k, y, w))
        h = self.inp(x)
        for blk in self.blocks:
            h = blk(h, c)
        return self.out(self.norm(h))


def check_fits(name: str, spec: ModelSpec, data) -> None:
    """Raise ConfigError when the variant cannot take the data's kind or shape."""
    fits = [n for n, s in MODELS.items() if data.kind in s.kinds and
            (len(data.shape) != 3 or all(v % s.divisor() == 0 for v in data.shape[1:]))]
    hint = f"; variants that fit: {', '.join(fits)}" if fits else "; no registered variant fits this shape"
    if data.kind not in spec.kinds:
        raise ConfigError(f"model.name: '{name}' takes {'/'.join(spec.kinds)} data, but data '{getattr(data, 'name', '?')}' "
                          f"is {data.kind} with shape {tuple(data.shape)}{hint}")
    if spec.kinds == IMAGE_KINDS:
        div = spec.divisor()
        if len(data.shape) != 3 or any(v % div for v in data.shape[1:]):
            raise ConfigError(f"model.name: '{name}' needs (C, H, W) with H and W multiples of {div}, got shape "
                              f"{tuple(data.shape)}{hint}")
    elif len(data.shape) != 1:
        raise ConfigError(f"model.name: '{name}' needs flat points (D,), got shape {tuple(data.shape)}{hint}")


def build_model(cfg: Config, data) -> nn.Module:
    """The variant cfg.model.name for this data (anything with .shape, .num_classes, .kind)."""
    name = cfg.model.name
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model '{name}'; choose one of {', '.join(MODELS)}." + suggest(name, MODELS))
    spec = MODELS[name]
    check_fits(name, spec, data)
    cls = {"dit": DiT, "unet": UNet, "mlp": PointMLP}[spec.family]
    meanflow = cfg.method.name == "meanflow"
    return cls(tuple(data.shape), data.num_classes, cfg.guidance.mode == "intrinsic", dropout=cfg.model.dropout,
               continuous_step=meanflow, time_scale=cfg.method.mf_time_scale if meanflow else 1000.0,
               w_scale=cfg.model.w_embed_scale, **dict(spec.kwargs))


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
