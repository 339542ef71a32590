"""The ablation driver end to end on generated data (a few variants), and the
default variants' configs."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.ablations import run
from experiments.ablations.configs import default
from experiments.mnist.run_test import _fake
from uswim_jax.experiment import ExperimentConfig
from uswim_jax.train import TrainConfig


def test_default_variants_are_valid():
    for get in (default.get_config, default.get_quick_config):
        c = get()
        names = [v.name for v in c.variants]
        assert names[0] == "base"
        for want in (
            "no-first-order",
            "k-squared",
            "pulse",
            "qlenet4",
            "qlenet4-q-scale-authors",
            "resnet-avg-pool-exact",
            "resnet-avg-pool-authors",
        ):
            assert want in names
        assert "avg-pool-exact" not in names  # LeNet has no average pool
        cfgs = {v.name: v.apply(c.base) for v in c.variants}
        assert not cfgs["no-first-order"].first_order
        assert cfgs["k-squared"].k_power == 2
        assert cfgs["pulse"].programming == "pulse"
        assert len(cfgs["fine-steps"].fractions) > len(c.base.fractions)
        # the Q-layer scale pair: the same 4-bit LeNet, one rule changed
        q, qa = cfgs["qlenet4"], cfgs["qlenet4-q-scale-authors"]
        assert q.train == qa.train and q.train.weight_bits == 4
        assert q.train.model == "lenet" and q.q_scale == "exact"
        assert qa.q_scale == "authors"
        assert dataclasses.replace(qa, q_scale="exact", label=q.label) == q
        # the average-pool pair: the same narrow ResNet-18, one rule changed
        r, ra = cfgs["resnet-avg-pool-exact"], cfgs["resnet-avg-pool-authors"]
        assert r.train == ra.train and r.train.model == "resnet18"
        assert r.train.width == 8 and r.train.dataset == "mnist"
        assert (r.avg_pool, ra.avg_pool) == ("exact", "authors")
        assert dataclasses.replace(ra, avg_pool="exact", label=r.label) == r
        assert set(c.pairs) == {
            ("qlenet4", "qlenet4-q-scale-authors"),
            ("resnet-avg-pool-exact", "resnet-avg-pool-authors"),
        }


def _tiny_config(names: tuple[str, ...]) -> default.AblationConfig:
    base = ExperimentConfig(
        train=TrainConfig(epochs=1, batch_size=32),
        sigmas=(0.3,),
        s_values=(),
        fractions=(0.01, 0.1),
        num_trials=2,
        methods=("swim",),
        test_subset=32,
        curvature_subset=64,
        avg_pool="authors",
        label="base",
    )
    tiny = {"epochs": 1, "batch_size": 32}
    variants = {
        v.name: v
        for v in default.variants(
            base.fractions,
            qlenet_train=dataclasses.replace(default.QLENET_TRAIN, **tiny),
            resnet_train=dataclasses.replace(default.RESNET_TRAIN, width=2, **tiny),
            resnet_mc={"test_subset": 32, "num_trials": 2},
        )
    }
    pairs = tuple(p for p in default.PAIRS if set(p) <= set(names))
    return default.AblationConfig(base, tuple(variants[n] for n in names), pairs)


def _run(tmp_path, config, only):
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    return run.run(
        config,
        tmp_path / "w",
        results_dir=tmp_path / "r",
        only=only,
        log=lambda *a: None,
        **kw,
    )


def _check_pair(tmp_path, out, a, b, head):
    """The pair shares the trained model; only the sensitivities differ, and not
    at the last layer."""
    w = tmp_path / "w"
    assert (w / b / "train" / "checkpoint.ckpt").read_bytes() == (
        w / a / "train" / "checkpoint.ckpt"
    ).read_bytes()
    ha = out["outs"][a]["sensitivities"]["obd"]["params"]
    hb = out["outs"][b]["sensitivities"]["obd"]["params"]
    np.testing.assert_allclose(hb[head]["kernel"], ha[head]["kernel"], rtol=1e-6)
    assert not np.allclose(hb["Conv_0"]["kernel"], ha["Conv_0"]["kernel"])
    text = (tmp_path / "r" / "ablations.md").read_text()
    assert f"### `{a}` against `{b}`" in text
    assert "Spearman" in text and "params differ" not in text
    return ha, hb


@pytest.mark.full_opt  # its pulse variant's write-verify loops run long
def test_ablations_end_to_end(tmp_path):
    config = _tiny_config(
        (
            "base",
            "no-first-order",
            "pulse",
            "ratio-0.2",
            "qlenet4",
            "qlenet4-q-scale-authors",
        )
    )
    out = _run(tmp_path, config, "pulse,qlenet4,qlenet4-q-scale-authors")
    assert set(out["outs"]) == {"base", "pulse", "qlenet4", "qlenet4-q-scale-authors"}
    text = (tmp_path / "r" / "ablations.md").read_text()
    assert "| pulse | uniform sigma=0.3 | swim |" in text
    assert "| base | uniform sigma=0.3 | swim |" in text
    assert "| ratio-0.2 |" in text and "not run" in text
    # the Q-layer scale pair: its own model section and the order comparison
    assert "## Results: lenet 4-bit (`qlenet4`, `qlenet4-q-scale-authors`)" in text
    assert "| qlenet4-q-scale-authors | uniform sigma=0.3 | swim |" in text
    # The variants reuse the first model trained with their training config and
    # (when they apply) its sensitivities.
    assert (tmp_path / "w" / "pulse" / "train" / "checkpoint.ckpt").is_file()
    _check_pair(tmp_path, out, "qlenet4", "qlenet4-q-scale-authors", "Dense_2")
    # Pulse cycles are measured: normalized cycles lie in (0, 1].
    curve = out["outs"]["pulse"]["curves"][("uniform sigma=0.3", "swim")]
    assert all(0 < c <= 1.0 for c in curve.cycles)
    csv = (tmp_path / "r" / "ablations.csv").read_text().splitlines()
    assert csv[0].startswith("variant,model,setting,method")
    assert len(csv) == 1 + 4  # one curve each: base, pulse, the pair
    pairs = (tmp_path / "r" / "ablation_pairs.csv").read_text().splitlines()
    assert pairs[0] == "pair,layer,weights,budget,verified_a,verified_b"
    assert len(pairs) == 1 + 3 * 5  # LeNet's 5 layers at 3 budgets


@pytest.mark.slow
def test_resnet_avg_pool_pair_end_to_end(tmp_path):
    """The average-pool pair on a width-2 ResNet-18 (slow: ResNet-18 compiles
    for a couple of minutes on 2 cores)."""
    names = ("base", "resnet-avg-pool-exact", "resnet-avg-pool-authors")
    out = _run(tmp_path, _tiny_config(names), ",".join(names[1:]))
    text = (tmp_path / "r" / "ablations.md").read_text()
    assert "## Results: resnet18 width 2" in text
    assert "| resnet-avg-pool-authors | uniform sigma=0.3 | swim |" in text
    a, b = names[1:]
    ha, hb = _check_pair(tmp_path, out, a, b, "Dense_0")
    # every conv lies before the global average pool over the 4x4 map: k = 16
    for name in ("Conv_0", "BasicBlock_7"):
        for x, y in zip(
            jax.tree.leaves(ha[name]), jax.tree.leaves(hb[name]), strict=True
        ):
            np.testing.assert_allclose(y, 16 * x, rtol=1e-4)
    pairs = (tmp_path / "r" / "ablation_pairs.csv").read_text().splitlines()
    assert len(pairs) == 1 + 3 * 21  # ResNet-18's 21 crossbar layers


def test_unknown_variant_is_refused(tmp_path):
    c = default.get_quick_config()
    c = dataclasses.replace(c)
    try:
        run.run(c, tmp_path, only="nope", train_data=_fake(8, 0), test_data=_fake(8, 1))
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_seed_run_folder_skips_folders_of_other_source_code(tmp_path):
    """A trained model or sensitivities from another source hash are not
    copied (the new run folder would refuse to resume them); the same source
    is."""
    import json

    from experiments.common import seed_run_folder
    from uswim_jax.experiment import manifest

    cfg = default._base()
    for name, source in (("same", manifest()["source_hash"]), ("other", "0" * 12)):
        (tmp_path / name / "train").mkdir(parents=True)
        for folder in (tmp_path / name, tmp_path / name / "train"):
            (folder / "manifest.json").write_text(
                json.dumps({**manifest(), "source_hash": source})
            )
        (tmp_path / name / "train" / "checkpoint.ckpt").write_bytes(b"x")
        (tmp_path / name / "sensitivities.npz").write_bytes(b"x")
    seed_run_folder(tmp_path, [("other", cfg)], tmp_path / "a", cfg)
    assert not (tmp_path / "a").exists()
    seed_run_folder(tmp_path, [("other", cfg), ("same", cfg)], tmp_path / "b", cfg)
    assert (tmp_path / "b" / "train" / "checkpoint.ckpt").is_file()
    assert (tmp_path / "b" / "sensitivities.npz").is_file()
