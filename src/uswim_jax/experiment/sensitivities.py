"""The per-weight scores every order is built from: the one-pass diagonal and
first-order term over the training set, the other curvature estimators on a
subset, noise-aware fine-tuning, and each method's verification order."""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp

from uswim_jax import curvature, selection
from uswim_jax.data import Dataset
from uswim_jax.device import UniformVariation
from uswim_jax.experiment.config import ExperimentConfig, Setting
from uswim_jax.experiment.units import _is_pulse
from uswim_jax.keys import key_stream


def sensitivity_sizes(config: ExperimentConfig, num_train: int) -> tuple[int, int]:
    """How many training images (the first ones) the one-pass diagonal and the
    other estimators use, out of ``num_train``: ``curvature_subset`` (default
    all) and ``estimator_subset``, both within the images the model was
    trained on (``train.train_subset``)."""
    n_train = min(config.train.train_subset or num_train, num_train)
    n_curv = min(config.curvature_subset or n_train, n_train)
    return n_curv, min(config.estimator_subset, n_train)


def compute_sensitivities(
    apply_fn, params, train_data: Dataset, config: ExperimentConfig, log=print
) -> dict[str, Any]:
    """One-pass diagonal (and first-order term) over the training images, plus
    the other curvature estimators on a subset (sizes: :func:`sensitivity_sizes`).
    Returns a dict of pytrees."""
    x, y = train_data
    n, m = sensitivity_sizes(config, len(x))
    t0 = time.perf_counter()
    aug = {}
    if config.curvature_augment:
        # Training augmentations in the second-derivative pass (docs/method.md
        # §4.3), batch-norm in inference mode (apply_fn).
        from uswim_jax.train import augment_batch

        aug = {
            "augment": augment_batch,
            "key": key_stream(config.seed, "curvature"),
        }
    hess, grad = curvature.obd_over_dataset(
        apply_fn,
        params,
        x[:n],
        y[:n],
        avg_pool=config.avg_pool,
        q_scale=config.q_scale,
        **aug,
    )
    hess, grad = jax.block_until_ready((hess, grad))  # so the time is real
    out = {"obd": hess, "obd_grad": grad}
    log(
        f"  one-pass diagonal over {n} training images: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    wanted = {m.split("-", 1)[1] for m in config.methods if m.startswith("eloss-")}
    xs, ys = jnp.asarray(x[:m]), jnp.asarray(y[:m])
    if "hutchinson" in wanted:
        t0 = time.perf_counter()
        loss_fn = curvature.make_loss_fn(apply_fn, xs, ys)
        est, se = jax.jit(
            functools.partial(
                curvature.hutchinson_diagonal,
                num_probes=config.hutchinson_probes,
                chunk_size=8,
            ),
            static_argnums=(1,),
        )(key_stream(config.seed, "probes"), loss_fn, params)
        out["hutchinson"], out["hutchinson_se"] = jax.block_until_ready((est, se))
        log(
            f"  Hutchinson ({config.hutchinson_probes} probes, {m} images): "
            f"{time.perf_counter() - t0:.1f} s"
        )
    for name, fn in (
        ("ggn", curvature.ggn_diagonal),
        ("fisher", curvature.fisher_diagonal),
    ):
        if name in wanted:
            t0 = time.perf_counter()
            out[name] = jax.block_until_ready(
                jax.jit(functools.partial(fn, apply_fn, chunk_size=64))(params, xs, ys)
            )
            log(f"  {name} diagonal ({m} images): {time.perf_counter() - t0:.1f} s")
    return out


def _finetuned(model, params, train_data, config, store, log) -> Any:
    """Noise-aware fine-tuning of the trained model (docs/method.md §7.4), cached in
    the run folder (``store``, a ``RunStore``) as ``finetuned.npz``."""
    from uswim_jax.finetune import FinetuneConfig, noise_aware_finetune

    got = store.load_trees("finetuned", params, ["params"])
    if got is not None:
        return got["params"]
    t0 = time.perf_counter()
    if config.train.train_subset:
        train_data = train_data.take(config.train.train_subset)
    device = UniformVariation(config.finetune_sigma, 0.0)
    ft = FinetuneConfig(
        steps=config.finetune_steps,
        batch_size=min(config.train.batch_size, len(train_data)),
        seed=config.seed,
    )
    params, _ = noise_aware_finetune(model, params, train_data, device, ft)
    store.save_trees("finetuned", {"params": params})
    log(
        f"  noise-aware fine-tuning, {config.finetune_steps} steps at sigma "
        f"{config.finetune_sigma:g}: {time.perf_counter() - t0:.1f} s"
    )
    return params


def method_order(
    method: str,
    params,
    sens: dict[str, Any],
    setting: Setting,
    device,
    seed: int,
    *,
    first_order: bool = True,
    k_power: int = 1,
) -> jax.Array:
    """The verification order of ``method`` under ``setting`` (``first_order``
    and ``k_power`` are the SWIM/U-SWIM ablation switches)."""
    if _is_pulse(device):  # expected-loss orders use the Gaussian equivalent
        device = setting.device(1.0)
    if method == "random":
        key = key_stream(seed, "random_order")
        scores = selection.random_score(key, params)
    elif method == "magnitude":
        scores = selection.magnitude_score(params)
    elif method == "swim":
        scores = selection.swim_score(
            params, sens["obd"], sens["obd_grad"], first_order=first_order
        )
    elif method == "uswim":
        scores = selection.uswim_score(
            params,
            sens["obd"],
            sens["obd_grad"],
            s=1.0 if setting.s is None else setting.s,
            first_order=first_order,
            k_power=k_power,
        )
    elif method.startswith("eloss-"):
        sw, sv = device.std(params)
        scores = selection.expected_loss_score(sens[method[6:]], sw, sv)
    else:
        raise ValueError(f"unknown method {method!r}")
    return selection.global_order(scores)
