"""Datasets as tensors: a loader from ism.training.sources, then a deterministic stratified train / held-out split, a
balanced training cap, a content fingerprint and an on-disk cache of the preprocessed tensors.

Nothing is ever downloaded: every loader reads files that are already on disk (a missing one is a ConfigError).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ism.system import store
from ism.conf.config import ConfigError, DataConfig
from ism.training.rng import generator
from ism.training.sources import LOADERS, Raw, mnist5k_file

CACHE_VERSION = 1  # bump when preprocessing changes so stale cache files are never read


# eq=False: tensors have no single truth value, so field-wise equality would raise; identity is the fingerprint.
@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    kind: str                  # "image" | "latent" | "points"
    train_x: Tensor            # float32 [N, *shape]; images in [-1, 1]
    train_y: Tensor            # int64 [N]
    test_x: Tensor             # held-out split (reference statistics)
    test_y: Tensor
    num_classes: int           # the null class index equals num_classes
    shape: tuple[int, ...]     # (C, H, W) or (2,)
    fingerprint: str           # sha256 of content + preprocessing (cache keys)


# ----------------------------------------------------------------------------------------------- split and cap
def _stratified_split(y: Tensor, fraction: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train_idx, test_idx): round(N * fraction) held out, spread over classes by largest remainder."""
    classes = torch.unique(y).tolist()
    perms = [torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)] for c in classes]
    exact = np.array([len(p) * fraction for p in perms])
    take = np.floor(exact).astype(int)
    extra = round(len(y) * fraction) - int(take.sum())
    for i in np.argsort(-(exact - take), kind="stable")[:max(extra, 0)]:
        take[i] += 1
    test = [p[:k] for p, k in zip(perms, take)]
    train = [p[k:] for p, k in zip(perms, take)]
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _balanced_cap(y: Tensor, cap: int, g: torch.Generator) -> Tensor:
    """Indices of at most `cap` items, as equal per class as the class sizes allow, chosen at random."""
    classes = torch.unique(y).tolist()
    counts = {c: int((y == c).sum()) for c in classes}
    quota = dict.fromkeys(classes, 0)
    left, active = min(cap, len(y)), [c for c in classes if counts[c] > 0]
    while left > 0 and active:
        share = max(left // len(active), 1)
        for c in active:
            take = min(share, counts[c] - quota[c], left)
            quota[c] += take
            left -= take
        active = [c for c in active if quota[c] < counts[c]]
    keep = [torch.nonzero(y == c).flatten()[torch.randperm(counts[c], generator=g)[:quota[c]]] for c in classes]
    return torch.cat(keep).sort().values


# ----------------------------------------------------------------------------------------------- fingerprint, cache
def _params(cfg: DataConfig, kind: str) -> dict:
    """The preprocessing parameters that shape the tensors (fingerprint and cache key)."""
    p = {"name": cfg.name, "kind": kind, "holdout_fraction": cfg.holdout_fraction, "split_seed": cfg.split_seed,
         "max_items": cfg.max_items, "version": CACHE_VERSION}
    if kind == "image":
        p["resolution"] = cfg.resolution
    if kind == "points":
        p.update(toy=cfg.toy, toy_samples=cfg.toy_samples)
    return p


def _fingerprint(params: dict, tensors: list[Tensor]) -> str:
    """sha256 over the parameters and the final tensors' bytes."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for t in tensors:
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.contiguous().numpy().data)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where preprocessed embedded datasets are cached."""
    return Path.home() / ".cache" / "ism" / "data"


_FIELDS = ("train_x", "train_y", "test_x", "test_y")


def _read_cache(path: Path, cfg: DataConfig, kind: str) -> Dataset | None:
    """A cached Dataset, or None when absent or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(z[k].copy()) for k in _FIELDS}
            nc, fp = int(z["num_classes"]), str(z["fingerprint"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    return Dataset(cfg.name, kind, num_classes=nc, shape=tuple(arrays["train_x"].shape[1:]), fingerprint=fp, **arrays)


def _write_cache(path: Path, ds: Dataset) -> None:
    """Written atomically, so concurrent loaders never read half a file; failures are harmless (a cache)."""
    try:
        store.atomic_write(path, lambda fh: np.savez(fh, num_classes=ds.num_classes, fingerprint=ds.fingerprint,
                                                     **{k: getattr(ds, k).numpy() for k in _FIELDS}))
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------- entry points
def load_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> Dataset:
    """The configured dataset, split and capped deterministically; raises ConfigError naming a bad path."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name: {cfg.name!r} is not allowed; choose one of {', '.join(LOADERS)}")
    cache = None
    if cfg.name == "mnist5k":  # the CSV parse dominates loading; the preprocessed result is cached by source + params
        src = hashlib.sha256(mnist5k_file().read_bytes()).hexdigest()
        key = hashlib.sha256(json.dumps([src, _params(cfg, "image")], sort_keys=True).encode()).hexdigest()[:24]
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = cache / f"mnist5k-{key}.npz"
        if cache.is_file() and (ds := _read_cache(cache, cfg, "image")) is not None:
            return ds
    raw = LOADERS[cfg.name](cfg)
    ds = _assemble(cfg, raw)
    if cache is not None:
        _write_cache(cache, ds)
    return ds


def _assemble(cfg: DataConfig, raw: Raw) -> Dataset:
    """Split (unless the source has its own held-out set), cap, count classes and fingerprint."""
    if raw.y.numel() != len(raw.x) or len(raw.x) == 0:
        raise ConfigError(f"data.path: {cfg.path or cfg.name} yielded {len(raw.x)} items and {raw.y.numel()} labels")
    if raw.test_x is None:  # no shipped test split: hold out a stratified share
        tr, te = _stratified_split(raw.y, cfg.holdout_fraction, generator(cfg.split_seed, 0, "split"))
        train_x, train_y, test_x, test_y = raw.x[tr], raw.y[tr], raw.x[te], raw.y[te]
    else:
        train_x, train_y, test_x, test_y = raw.x, raw.y, raw.test_x, raw.test_y
        if test_x.shape[1:] != train_x.shape[1:]:
            raise ConfigError(f"data.path: {cfg.path}: held-out items are {tuple(test_x.shape[1:])}, "
                              f"training items {tuple(train_x.shape[1:])}")
    if cfg.max_items and cfg.max_items < len(train_x):
        keep = _balanced_cap(train_y, cfg.max_items, generator(cfg.split_seed, 2, "split"))
        train_x, train_y = train_x[keep], train_y[keep]
    if len(train_x) == 0:
        raise ConfigError(f"data.holdout_fraction: {cfg.holdout_fraction} leaves no training items")
    labels = torch.cat([train_y, test_y])
    if int(labels.min()) < 0:
        raise ConfigError(f"data.path: {cfg.path or cfg.name} has negative labels; expected 0 .. K-1")
    tensors = [t.contiguous() for t in (train_x, train_y, test_x, test_y)]
    return Dataset(name=cfg.name, kind=raw.kind, train_x=tensors[0], train_y=tensors[1], test_x=tensors[2],
                   test_y=tensors[3], num_classes=int(labels.max()) + 1, shape=tuple(train_x.shape[1:]),
                   fingerprint=_fingerprint(_params(cfg, raw.kind), tensors))


def describe(ds: Dataset) -> str:
    """One line: name, train / held-out sizes, item shape, classes."""
    return (f"{ds.name} ({ds.kind}): {len(ds.train_x)} train / {len(ds.test_x)} held-out, shape "
            f"{tuple(ds.shape)}, {ds.num_classes} classes, fingerprint {ds.fingerprint[:12]}")
