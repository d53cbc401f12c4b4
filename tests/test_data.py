"""ism.training.data: every loader on real or test-written files, the deterministic split, the cap, fingerprints, errors."""
from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ism.conf.config import ConfigError, DataConfig
from ism.training.data import describe, load_dataset
from ism.training.sources import read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ism-cache")


# ----------------------------------------------------------------------------------------------- mnist5k
def test_mnist5k_default_split_and_values(cache):
    ds = load_dataset(cfg(), cache_dir=cache)
    assert (ds.name, ds.kind, ds.shape, ds.num_classes) == ("mnist5k", "image", (1, 16, 16), 10)
    assert ds.train_x.shape == (4500, 1, 16, 16) and ds.test_x.shape == (500, 1, 16, 16)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.train_y.bincount().tolist() == [450] * 10 and ds.test_y.bincount().tolist() == [50] * 10
    assert ds.train_x.min() == -1.0 and ds.train_x.max() == 1.0
    assert ds.train_x[:, :, 0, :].eq(-1).all()  # the 28->32 padding leaves a blank border row at 16x16
    assert 0.05 < (ds.train_x > 0).float().mean() < 0.3  # real digit strokes, not noise or blanks
    assert "4500 train / 500 held-out" in describe(ds) and "10 classes" in describe(ds)


def test_mnist5k_deterministic_cached_and_seeded(tmp_path):
    fresh = load_dataset(cfg(), cache_dir=tmp_path)
    assert list(tmp_path.glob("mnist5k-*.npz")), "the preprocessed tensors were not cached"
    t0 = time.perf_counter()
    cached = load_dataset(cfg(), cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 2.0
    assert cached.fingerprint == fresh.fingerprint
    assert torch.equal(cached.train_x, fresh.train_x) and torch.equal(cached.test_y, fresh.test_y)
    other = load_dataset(cfg(split_seed=1), cache_dir=tmp_path)
    assert other.fingerprint != fresh.fingerprint
    assert not torch.equal(other.test_x, fresh.test_x)
    # a different split moves items between the parts but keeps the whole
    whole = lambda d: (d.train_x.sum(dtype=torch.float64) + d.test_x.sum(dtype=torch.float64)).item()
    assert whole(other) == pytest.approx(whole(fresh), rel=1e-9)


@pytest.mark.parametrize("res", [28, 32, 8])
def test_mnist5k_resolutions(cache, res):
    ds = load_dataset(cfg(resolution=res), cache_dir=cache)
    assert ds.shape == (1, res, res) and len(ds.train_x) == 4500
    assert ds.train_x.min() >= -1 and ds.train_x.max() <= 1


def test_mnist5k_bad_resolution_names_key(cache):
    with pytest.raises(ConfigError, match="data.resolution: 12"):
        load_dataset(cfg(resolution=12), cache_dir=cache)


def test_max_items_balanced_and_holdout_untouched(cache):
    ds = load_dataset(cfg(max_items=512), cache_dir=cache)
    counts = ds.train_y.bincount().tolist()
    assert sum(counts) == 512 and max(counts) - min(counts) <= 1
    assert len(ds.test_x) == 500
    full = load_dataset(cfg(), cache_dir=cache)
    assert torch.equal(ds.test_x, full.test_x)  # the cap never changes the reference set


def test_unconditional_keeps_labels(cache):
    ds = load_dataset(cfg(conditional=False), cache_dir=cache)
    assert ds.num_classes == 10 and ds.train_y.unique().tolist() == list(range(10))


def test_holdout_zero_gives_empty_test(cache):
    ds = load_dataset(cfg(holdout_fraction=0.0), cache_dir=cache)
    assert len(ds.train_x) == 5000 and ds.test_x.shape == (0, 1, 16, 16)


def test_digits8():
    ds = load_dataset(cfg(name="digits8", resolution=16))
    assert ds.shape == (1, 16, 16) and len(ds.train_x) + len(ds.test_x) == 1797 and ds.num_classes == 10
    assert ds.train_x.min() == -1 and ds.train_x.max() == 1
    small = load_dataset(cfg(name="digits8", resolution=8))
    assert small.shape == (1, 8, 8) and small.fingerprint != ds.fingerprint


# ----------------------------------------------------------------------------------------------- IDX
def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    """A real IDX file: magic (0, 0, 0x08, ndim), big-endian dims, uint8 data."""
    blob = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def idx_dir(root: Path, gz: bool, test: bool = True, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = (np.arange(n) % 3).astype(np.uint8)
    write_idx(root / "train-images-idx3-ubyte", images, gz)
    write_idx(root / "train-labels-idx1-ubyte", labels, gz)
    if test:
        write_idx(root / "t10k-images-idx3-ubyte", np.full((6, 28, 28), 255, np.uint8), gz)
        write_idx(root / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 0, 1, 2], np.uint8), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images, labels = idx_dir(tmp_path, gz)
    suffix = ".gz" if gz else ""
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    ds = load_dataset(cfg(name="idx", path=str(tmp_path), resolution=28))
    assert ds.shape == (1, 28, 28) and len(ds.train_x) == 30 and len(ds.test_x) == 6  # t10k is the held-out set
    assert torch.equal(ds.train_y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(ds.train_x[:, 0], torch.from_numpy(images / 127.5 - 1).float(), atol=1e-6)
    assert ds.num_classes == 3
    # 28 -> padded 32 -> 16: a white t10k image becomes white with a one-pixel blank frame
    ds16 = load_dataset(cfg(name="idx", path=str(tmp_path), resolution=16))
    img = ds16.test_x[0, 0]
    assert img[0].eq(-1).all() and img[:, -1].eq(-1).all() and img[1:-1, 1:-1].eq(1).all()


def test_idx_without_t10k_uses_holdout(tmp_path):
    idx_dir(tmp_path, gz=False, test=False, n=30)
    ds = load_dataset(cfg(name="idx", path=str(tmp_path), holdout_fraction=0.2))
    assert (len(ds.train_x), len(ds.test_x)) == (24, 6) and ds.test_y.bincount().tolist() == [2, 2, 2]


def test_idx_malformed_magic_names_path(tmp_path):
    idx_dir(tmp_path, gz=False, test=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + bad.read_bytes()[4:])
    with pytest.raises(ConfigError, match=f"{bad}.*magic"):
        load_dataset(cfg(name="idx", path=str(tmp_path)))


def test_idx_truncated_and_missing(tmp_path):
    idx_dir(tmp_path, gz=False, test=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-3])
    with pytest.raises(ConfigError, match="train-labels-idx1-ubyte.*truncated"):
        load_dataset(cfg(name="idx", path=str(tmp_path)))
    labels.unlink()
    with pytest.raises(ConfigError, match=f"{tmp_path} has no train-labels-idx1-ubyte"):
        load_dataset(cfg(name="idx", path=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"{empty} has no train-images-idx3-ubyte.*MNIST IDX layout"):
        load_dataset(cfg(name="idx", path=str(empty)))
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'} does not exist"):
        load_dataset(cfg(name="idx", path=str(tmp_path / "nope")))


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_copy():
    ds = load_dataset(cfg(name="idx", path=str(FASHION), resolution=32))
    assert (len(ds.train_x), len(ds.test_x), ds.num_classes, ds.shape) == (60000, 10000, 10, (1, 32, 32))


# ----------------------------------------------------------------------------------------------- CIFAR-10
def write_cifar(root: Path, name: str, n: int, label0: int) -> None:
    planes = np.concatenate([np.full((n, 1024), v, np.uint8) for v in (255, 0, 128)], 1)  # R, G, B planes
    labels = [(label0 + i) % 10 for i in range(n)]
    with open(root / name, "wb") as fh:
        pickle.dump({b"data": planes, b"labels": labels, b"batch_label": b"x"}, fh)


def test_cifar10_batches(tmp_path):
    write_cifar(tmp_path, "data_batch_1", 20, 0)
    write_cifar(tmp_path, "data_batch_2", 20, 5)
    write_cifar(tmp_path, "test_batch", 10, 0)
    ds = load_dataset(cfg(name="cifar10", path=str(tmp_path), resolution=32))
    assert ds.shape == (3, 32, 32) and (len(ds.train_x), len(ds.test_x)) == (40, 10) and ds.num_classes == 10
    assert ds.train_x[:, 0].eq(1).all() and ds.train_x[:, 1].eq(-1).all()  # channel planes land in order
    assert torch.allclose(ds.train_x[:, 2], torch.tensor(128 / 127.5 - 1), atol=1e-6)
    assert ds.train_y[20:].tolist()[:3] == [5, 6, 7]
    assert load_dataset(cfg(name="cifar10", path=str(tmp_path), resolution=16)).shape == (3, 16, 16)


def test_cifar10_errors(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} has no data_batch_1.*CIFAR-10"):
        load_dataset(cfg(name="cifar10", path=str(tmp_path)))
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'data_batch_1'} is not a CIFAR-10 batch"):
        load_dataset(cfg(name="cifar10", path=str(tmp_path)))


# ----------------------------------------------------------------------------------------------- image folder
def test_image_folder_rgb_crop(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            img = np.zeros((20, 40, 3), np.uint8)
            img[:, :10] = (255, 0, 0)      # red margins fall outside the centre crop
            img[:, 30:] = (255, 0, 0)
            img[:, 10:30] = (0, 0, 255)
            Image.fromarray(img).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(cfg(name="image_folder", path=str(tmp_path), resolution=16, holdout_fraction=0.25))
    assert ds.shape == (3, 16, 16) and (len(ds.train_x), len(ds.test_x)) == (6, 2) and ds.num_classes == 2
    assert ds.test_y.tolist() == [0, 1]
    everything = torch.cat([ds.train_x, ds.test_x])
    assert everything[:, 2].gt(0.9).all() and everything[:, 0].lt(-0.9).all()  # only the blue centre survives


def test_image_folder_grayscale_and_errors(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((24, 24), 200, np.uint8)).save(tmp_path / "a" / "x.png")
    ds = load_dataset(cfg(name="image_folder", path=str(tmp_path), resolution=8, holdout_fraction=0.0))
    assert ds.shape == (1, 8, 8) and torch.allclose(ds.train_x, torch.tensor(200 / 127.5 - 1), atol=1e-6)
    (tmp_path / "a" / "broken.png").write_text("not an image")
    with pytest.raises(ConfigError, match="broken.png is not a readable image"):
        load_dataset(cfg(name="image_folder", path=str(tmp_path)))
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match=f"{tmp_path / 'b'} has no images"):
        load_dataset(cfg(name="image_folder", path=str(tmp_path)))
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(ConfigError, match=f"{flat} has no class subfolders"):
        load_dataset(cfg(name="image_folder", path=str(flat)))


# ----------------------------------------------------------------------------------------------- latents
def latents(n: int, start: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.broadcast_to(np.arange(start, start + n, dtype=np.float32)[:, None, None, None] * 0.5 - 3.0, (n, 4, 2, 2))
    return np.ascontiguousarray(x), np.arange(start, start + n) % 4


def test_latents_npz_and_npy(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        x, y = latents(10, 10 * k)
        np.savez(shards / f"part{k}.npz", x=x, y=y)
    x, y = latents(10, 20)
    np.save(shards / "extra_x.npy", x)
    np.save(shards / "extra_y.npy", y)
    ds = load_dataset(cfg(name="latents", path=str(shards), holdout_fraction=0.2))
    assert ds.kind == "latent" and ds.shape == (4, 2, 2) and ds.num_classes == 4
    assert (len(ds.train_x), len(ds.test_x)) == (24, 6)
    allx, ally = torch.cat([ds.train_x, ds.test_x]), torch.cat([ds.train_y, ds.test_y])
    ids = ((allx[:, 0, 0, 0] + 3.0) * 2).round().long()
    assert sorted(ids.tolist()) == list(range(30))  # values left as stored, nothing lost or duplicated
    assert torch.equal(ally, ids % 4) and allx.amin(dim=(1, 2, 3)).eq(allx.amax(dim=(1, 2, 3))).all()
    single = load_dataset(cfg(name="latents", path=str(shards / "extra_x.npy"), holdout_fraction=0.0))
    assert len(single.train_x) == 10 and single.train_y.tolist() == [i % 4 for i in range(20, 30)]


def test_latents_errors(tmp_path):
    with pytest.raises(ConfigError, match=f"{tmp_path} has no .npz"):
        load_dataset(cfg(name="latents", path=str(tmp_path)))
    np.savez(tmp_path / "bad.npz", z=np.zeros((3, 1)))
    with pytest.raises(ConfigError, match="bad.npz has arrays \\['z'\\] but no 'x'"):
        load_dataset(cfg(name="latents", path=str(tmp_path)))
    with pytest.raises(ConfigError, match="missing.npz does not exist"):
        load_dataset(cfg(name="latents", path=str(tmp_path / "missing.npz")))


# ----------------------------------------------------------------------------------------------- toy2d
@pytest.mark.parametrize("toy,classes", [("gaussians8", 8), ("checkerboard", 4), ("two_moons", 2)])
def test_toy2d(toy, classes):
    ds = load_dataset(cfg(name="toy2d", toy=toy, toy_samples=2000))
    assert (ds.kind, ds.shape, ds.num_classes) == ("points", (2,), classes)
    assert len(ds.train_x) + len(ds.test_x) == 2000 and ds.train_x.shape[1] == 2
    assert ds.test_y.bincount().tolist() == [200 // classes] * classes
    assert 0.3 < ds.train_x.std(0).min() and ds.train_x.abs().max() < 3  # roughly unit scale
    assert load_dataset(cfg(name="toy2d", toy=toy, toy_samples=2000)).fingerprint == ds.fingerprint
    assert load_dataset(cfg(name="toy2d", toy=toy, toy_samples=2000, split_seed=3)).fingerprint != ds.fingerprint


def test_gaussians8_labels_are_components():
    ds = load_dataset(cfg(name="toy2d", toy="gaussians8", toy_samples=800))
    for c in range(8):
        mean = ds.train_x[ds.train_y == c].mean(0)
        angle = 2 * np.pi * c / 8
        assert torch.allclose(mean, torch.tensor([np.cos(angle), np.sin(angle)], dtype=torch.float32) * 2**0.5, atol=0.05)
