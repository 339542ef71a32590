"""The ablation driver end to end on generated data (a few variants), and the
default variants' configs."""

import dataclasses

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
        for want in ("no-first-order", "k-squared", "avg-pool-exact", "pulse"):
            assert want in names
        cfgs = {v.name: v.apply(c.base) for v in c.variants}
        assert not cfgs["no-first-order"].first_order
        assert cfgs["k-squared"].k_power == 2
        assert cfgs["pulse"].programming == "pulse"
        assert len(cfgs["fine-steps"].fractions) > len(c.base.fractions)


def test_ablations_end_to_end(tmp_path):
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
    variants = {v.name: v for v in default.variants(base.fractions)}
    config = default.AblationConfig(
        base,
        (
            variants["base"],
            variants["no-first-order"],
            variants["pulse"],
            variants["ratio-0.2"],
        ),
    )
    kw = {"train_data": _fake(128, 0), "test_data": _fake(64, 1), "progress": False}
    out = run.run(
        config,
        tmp_path / "w",
        results_dir=tmp_path / "r",
        only="pulse",
        log=lambda *a: None,
        **kw,
    )
    assert set(out["outs"]) == {"base", "pulse"}
    text = (tmp_path / "r" / "ablations.md").read_text()
    assert "| pulse | uniform sigma=0.3 | swim |" in text
    assert "| base | uniform sigma=0.3 | swim |" in text
    assert "| ratio-0.2 |" in text and "not run" in text
    assert "q-scale-quirk" in text and "not reproduced" in text
    # The variants reuse the base's model and (when they apply) sensitivities.
    assert (tmp_path / "w" / "pulse" / "train" / "checkpoint.ckpt").is_file()
    # Pulse cycles are measured: normalized cycles lie in (0, 1].
    curve = out["outs"]["pulse"]["curves"][("uniform sigma=0.3", "swim")]
    assert all(0 < c <= 1.0 for c in curve.cycles)
    csv = (tmp_path / "r" / "ablations.csv").read_text().splitlines()
    assert csv[0].startswith("variant,setting,method")
    assert len(csv) == 1 + 2  # one curve each: base, pulse


def test_unknown_variant_is_refused(tmp_path):
    c = default.get_quick_config()
    c = dataclasses.replace(c)
    try:
        run.run(c, tmp_path, only="nope", train_data=_fake(8, 0), test_data=_fake(8, 1))
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("expected ValueError")
