"""uswim_jax: selective write-verify for computing-in-memory neural accelerators.

The core (device and programming models, curvature, selection, Monte Carlo, sweep)
imports only JAX and NumPy and works on any ``apply_fn(params, x) -> logits`` with
any params pytree. Models, datasets, training, reports and the CLI live in the
subpackages ``uswim_jax.models``, ``uswim_jax.data``, ``uswim_jax.train`` and
``uswim_jax.cli``, which need the ``experiments`` extra.
"""

from uswim_jax._tree import (
    CrossbarPredicate as CrossbarPredicate,
)
from uswim_jax._tree import (
    crossbar_flags as crossbar_flags,
)
from uswim_jax._tree import (
    crossbar_size as crossbar_size,
)
from uswim_jax._tree import (
    default_crossbar as default_crossbar,
)

# --- device and programming models (issue 3) ---

# --- curvature and selection (issue 4) ---

__version__ = "0.1.0"
