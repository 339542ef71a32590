"""The statistics every result is reported with: the normal-approximation 95 %
confidence interval and the accuracy margins below exhaustive write-verify.

One definition of each, used by :func:`uswim_jax.montecarlo.summarize`,
:meth:`uswim_jax.sweep.Curve.cycles_to_target` and the reports.
"""

import numpy as np

#: The two-sided 95 % quantile of the standard normal, ``Phi^-1(0.975)``.
Z95 = 1.959963984540054

#: The margins (percentage points below exhaustive write-verify) every report uses.
MARGINS = (0.1, 0.5, 1.0)


def ci95_half_width(std, n):
    """Half-width of the normal-approximation 95 % CI of a mean of ``n``
    samples with sample std ``std``: ``Z95 * std / sqrt(n)``.

    Args:
        std: the sample std (a number or a NumPy array).
        n: the number of samples (> 0).

    Returns:
        The half-width, like ``std`` (float64).

    Examples:
        >>> round(float(ci95_half_width(2.0, 4)), 4)
        1.96
    """
    return Z95 * np.asarray(std, np.float64) / np.sqrt(n)


def mean_ci95(samples, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``samples`` along ``axis`` and the half-width of its 95 % CI
    (sample std with ``ddof=1``; 0 for one sample), in float64.

    Args:
        samples: an array of samples.
        axis: the sample axis.

    Returns:
        ``(mean, half_width)``.
    """
    a = np.asarray(samples, np.float64)
    n = a.shape[axis]
    mean = a.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, ci95_half_width(a.std(axis=axis, ddof=1), n)
