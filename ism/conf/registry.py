"""The model registry as data (torch-free): variant names, families, sizes and the data kinds each fits.

`ism.conf.schema` takes model.name's choices from it, so a bad name fails at resolve time (a --dry-run) rather than inside
a trial; `ism.training.models` builds the networks.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_KINDS = ("image", "latent")
POINT_KINDS = ("points",)


# ----------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelSpec:
    """A registered variant: its family, the data kinds it fits and its size arguments."""
    family: str                  # "dit" | "unet" | "mlp"
    kwargs: tuple                # (name, value) pairs passed to the family's constructor
    about: str

    @property
    def kinds(self) -> tuple[str, ...]:
        return POINT_KINDS if self.family == "mlp" else IMAGE_KINDS

    def divisor(self) -> int:
        """H and W must be multiples of this (patch, or 2^(levels-1) poolings)."""
        kw = dict(self.kwargs)
        if self.family == "unet":
            return kw.get("patch", 1) * 2 ** (len(kw["channels"]) - 1)
        return kw["patch"] if self.family == "dit" else 1



def _dit(width, depth, heads, patch):
    return ModelSpec("dit", (("width", width), ("depth", depth), ("heads", heads), ("patch", patch)),
                     f"DiT width {width}, depth {depth}, {heads} heads, patch {patch}")


def _unet(channels, emb, norm_groups, about):
    return ModelSpec("unet", (("channels", channels), ("blocks", 1), ("emb", emb), ("norm_groups", norm_groups)), about)


# The unet-* sizes were chosen by measurement on one CPU thread (docs/embedded-model.md): compute scales with the
# channels at full resolution, and GroupNorm costs little there but makes short runs learn far faster.
MODELS: dict[str, ModelSpec] = {
    "unet-smoke": _unet((8, 16), 32, 4, "minimal FiLM U-Net for seconds-long tests"),
    "unet-tiny": _unet((16, 32), 64, 8, "embedded default: FiLM U-Net 16/32 channels, 16x16 MNIST on 1 CPU thread"),
    "unet-small": _unet((32, 64), 128, 8, "a wider FiLM U-Net (about 2.5x the step time of unet-tiny)"),
    "mlp2d": ModelSpec("mlp", (("width", 128), ("depth", 4)), "residual adaLN MLP for 2-D points"),
    # About 4x cheaper per row than mlp2d (measured 70 -> 17 us per sample-forward on one loaded core), which keeps
    # ablations/compounding.yaml (18 trials, 128-step calibration samples) to minutes on the embedded profile.
    "mlp2d-small": ModelSpec("mlp", (("width", 64), ("depth", 3)), "a smaller residual adaLN MLP for 2-D points"),
    "dit-tiny/4": _dit(128, 4, 4, 4),
    "dit-s/2": _dit(384, 12, 6, 2),
    "dit-b/2": _dit(768, 12, 12, 2),
    "dit-xl/2": _dit(1152, 28, 16, 2),
}
