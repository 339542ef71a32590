"""The transformer study (docs/studies.md, part 3(c)): the deep study's driver
and report (``experiments.deep.run.run_study``) on the small vision
transformer, at 28x28 (no padding), with the layers grouped by role."""

import re

from experiments.deep.run import REPORT_FILES, study_runner

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


#: The transformer study: the ViT on the unpadded datasets.
run = study_runner(
    "Selective write-verify on a transformer: the small ViT",
    vit_group,
    lambda c: None,
    ("patch embedding", *_ROLES.values(), "head"),
)
