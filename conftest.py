"""JAX settings for every test, under ``tests/`` and ``experiments/``.

Strict promotion: ``jax_numpy_rank_promotion="raise"`` and
``jax_numpy_dtype_promotion="strict"``, so no test passes on an implicit
broadcast or dtype change that a user's strict setting would refuse.

Fast compiling: the suite compiles with XLA's backend optimisations off
(``jax_disable_most_optimizations``). Its models are tiny, so compiling is most
of its time, and LLVM's optimisation passes are most of compiling. The HLO
program (fusion, layouts, the library calls for matmuls and convolutions) is
the same, and every test compares programs compiled alike. Subprocesses the
tests start inherit the setting. A test marked ``full_opt`` (one whose own run
time, not its compiling, dominates: long pulse loops, a compile-time benchmark)
compiles with them on, and ``USWIM_TEST_FULL_OPT=1`` runs every test compiled as
users' programs are.

No file of ``"measure"``'s choices (``USWIM_CONV_CACHE`` empty, here and in the
subprocesses): a test that measures does so afresh, whatever earlier runs left
in the user's cache.
"""

import os

os.environ["USWIM_CONV_CACHE"] = ""
_FAST_COMPILE = os.environ.get("USWIM_TEST_FULL_OPT") != "1"
if _FAST_COMPILE:
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"

import jax  # noqa: E402 (after the setting above, which it reads on import)
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_disable_most_optimizations", _FAST_COMPILE)


@pytest.fixture(autouse=True)
def _compile_setting(request):
    """XLA's optimisations on for a test marked ``full_opt``."""
    if not _FAST_COMPILE or request.node.get_closest_marker("full_opt") is None:
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
