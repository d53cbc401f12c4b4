"""Scoring samples, one scorer per data kind: images and latents by FID/KID (torch-fidelity, a registered extractor,
reference statistics of the held-out split cached under a name that hashes everything they depend on), 2-D points by
energy distance and sliced Wasserstein against the held-out points. evaluate_run asks a scorer for its rows, for the
one number a guidance sweep compares, and for the picture of a sample set."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_fidelity

from ism.evaluation import diagnostics as D
from ism.training import extractors as E
from ism.training.sample import save_grid

KID_SUBSETS = 50


class ImageSet(torch.utils.data.Dataset):
    """Images in [-1, 1] as torch-fidelity items (uint8 [C, H, W]; latents stay float); counts reads."""

    def __init__(self, x: torch.Tensor, rgb: bool = False, image: bool = True):
        self.x = E.to_uint8(x) if image else x.float()
        self.rgb = rgb and self.x.shape[1] == 1
        self.reads = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i].expand(3, -1, -1) if self.rgb else self.x[i]


@dataclass
class Reference:
    images: ImageSet
    cache_name: str
    ref_hash: str


def reference(data, ext: E.ExtractorSetup) -> Reference:
    """The held-out split and the cache name of its statistics; any change of the key gives a new name."""
    key = {"fingerprint": data.fingerprint, "split": "test", "extractor": ext.key, "resolution": list(data.shape),
           "rgb": ext.rgb}
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Reference(ImageSet(data.test_x, ext.rgb, data.kind == "image"), f"ism-ref-{h}", h)


def kid_subset_size(n1: int, n2: int) -> int:
    """KID subsets of half the smaller set (at most 1,000): subsets as large as the set would all be equal."""
    return max(min(1000, min(n1, n2) // 2), min(n1, n2, 2))


def fid_kid(samples: torch.Tensor | ImageSet, ref: Reference | ImageSet, ext: E.ExtractorSetup,
            cache_root: str | Path | None = None, kid: bool = True, image: bool = True) -> dict[str, float]:
    """FID (and KID) of samples against a Reference (cached stats) or another ImageSet (not cached)."""
    a = samples if isinstance(samples, ImageSet) else ImageSet(samples, ext.rgb, image)
    b = ref.images if isinstance(ref, Reference) else ref
    if isinstance(ref, Reference) and cache_root is None:
        raise ValueError("fid_kid: reference statistics are cached; pass cache_root")
    kw = dict(ext.kwargs)
    if isinstance(ref, Reference):
        kw.update(input2_cache_name=ref.cache_name, cache_root=str(cache_root), cache=True)
    else:
        kw.update(cache=False)
    m = torch_fidelity.calculate_metrics(
        input1=a, input2=b, fid=True, kid=kid, kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset_size(len(a), len(b)),
        cuda=torch.cuda.is_available(), save_cpu_ram=True, verbose=False, batch_size=ext.batch_size, **kw)
    out = {"fid": m["frechet_inception_distance"]}
    if kid:
        out.update(kid=m["kernel_inception_distance_mean"], kid_std=m["kernel_inception_distance_std"])
    return out


def _save_points(x: torch.Tensor, ref: torch.Tensor, path: Path) -> None:
    """Scatter of 2-D samples over the held-out points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)



class PointScorer:
    """2-D points: energy distance and sliced Wasserstein to the held-out points; energy distance compares sweeps."""
    metric = "energy_distance"
    extractor, ref_hash, accuracy = "points", None, None

    def __init__(self, data):
        self.held = data.test_x
        self.ref_hash = data.fingerprint[:16]

    def rows(self, x: torch.Tensor, s: int, g: float | None, kid: bool = True) -> list[dict]:
        return [D.row("energy_distance", D.energy_distance(x, self.held), s, g),
                D.row("sliced_wasserstein", D.sliced_wasserstein(x, self.held), s, g)]

    def value(self, x: torch.Tensor) -> float:
        return D.energy_distance(x, self.held)

    def picture(self, x: torch.Tensor, path: Path, cfg, data) -> None:
        _save_points(x, self.held, path)


class ImageScorer:
    """Images and latents: FID (and KID) against the cached statistics of the held-out split; FID compares sweeps."""
    metric = "fid"

    def __init__(self, cfg, data, cache_root: str | Path):
        ev = cfg.eval
        self.ext = E.setup(ev.extractor, data, ev.weights_path, ev.batch_size, root=Path(cache_root))
        self.ref = reference(data, self.ext)
        self.fid_root = Path(cache_root) / "fidelity"
        self.image = data.kind == "image"
        self.extractor, self.ref_hash, self.accuracy = self.ext.name, self.ref.ref_hash, self.ext.accuracy

    def rows(self, x: torch.Tensor, s: int, g: float | None, kid: bool = True) -> list[dict]:
        return [D.row(k, v, s, g) for k, v in fid_kid(x, self.ref, self.ext, self.fid_root, kid=kid,
                                                        image=self.image).items()]

    def value(self, x: torch.Tensor) -> float:
        return fid_kid(x, self.ref, self.ext, self.fid_root, kid=False, image=self.image)["fid"]

    def picture(self, x: torch.Tensor, path: Path, cfg, data) -> None:
        if self.image:  # latents have no picture
            save_grid(x, path, nrow=max(data.num_classes, 1) if cfg.data.conditional else 10)


def scorer(cfg, data, cache_root: str | Path) -> PointScorer | ImageScorer:
    """The scorer of a data kind."""
    return PointScorer(data) if data.kind == "points" else ImageScorer(cfg, data, cache_root)
