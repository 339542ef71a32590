"""``uswim_jax.__all__`` lists exactly the public names the package re-exports."""

import types

import uswim_jax


def _exported_names() -> set[str]:
    return {
        name
        for name, value in vars(uswim_jax).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }


def test_all_lists_every_public_name_once():
    listed = uswim_jax.__all__
    assert len(listed) == len(set(listed)), "duplicate names in __all__"
    assert set(listed) == _exported_names()


def test_star_import_gives_the_listed_names():
    namespace: dict = {}
    exec("from uswim_jax import *", namespace)
    got = {k for k in namespace if k != "__builtins__"}
    assert got == set(uswim_jax.__all__)
    for name in uswim_jax.__all__:
        assert namespace[name] is getattr(uswim_jax, name)


def test_sweep_is_the_function():
    # The function shadows its module as a package attribute; the module's other
    # names are re-exported (Curve, MARGINS, ...) or imported from it directly.
    from uswim_jax.sweep import Curve

    assert callable(uswim_jax.sweep) and not isinstance(
        uswim_jax.sweep, types.ModuleType
    )
    assert uswim_jax.Curve is Curve
