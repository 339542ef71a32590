"""The transformer study (docs/studies.md, part 3(c)): the deep study's driver
and report (``experiments.deep.run.run_study``) on the small vision
transformer, at 28x28 (no padding), with the layers grouped by role."""

import os
import re

from experiments.deep.configs.default import StudyConfig
from experiments.deep.run import REPORT_FILES, run_study
from uswim_jax import data

__all__ = ["REPORT_FILES", "run", "vit_group"]

_ROLES = {
    "query": "query",
    "key": "key",
    "value": "value",
    "out": "attention output",
    "mlp1": "MLP in",
    "mlp2": "MLP out",
}


def vit_group(path: str) -> str:
    """The role of a ViT crossbar layer: the patch embedding, the query, key,
    value and output projections of the attention, the two MLP kernels, the
    head (summed over the blocks)."""
    m = re.search(r"block\d+/(?:attn/)?(\w+)/kernel", path)
    if m and m.group(1) in _ROLES:
        return _ROLES[m.group(1)]
    if "embed" in path:
        return "patch embedding"
    if "head" in path:
        return "head"
    raise ValueError(f"no ViT layer group for {path!r}")


def run(
    config: StudyConfig,
    workdir: str | os.PathLike,
    *,
    results_dir: str | os.PathLike | None = None,
    datasets: dict[str, tuple[data.Dataset, data.Dataset]] | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """The transformer study: the ViT on the unpadded datasets."""
    return run_study(
        config,
        workdir,
        title="Selective write-verify on a transformer: the small ViT",
        group=vit_group,
        preprocess=None,
        results_dir=results_dir,
        datasets=datasets,
        progress=progress,
        log=log,
    )
