"""Every Strategy subclass in domadapt keeps the common contract (domadapt.testing.run_strategy_test).

The classes are discovered, not listed: a new strategy is covered without editing
this file. Classes defined in the base modules (``domadapt.strategy``,
``domadapt.strategies.base``) are the abstract bases a user subclasses.
"""

import importlib
import pkgutil
import warnings

import pytest

import domadapt as da
from domadapt.testing import run_strategy_test

BASE_MODULES = {"domadapt.strategy", "domadapt.strategies.base"}


def _import_every_module():
    for module in pkgutil.walk_packages(da.__path__, prefix="domadapt."):
        if module.name not in ("domadapt.demo", "domadapt.cli"):  # entry points; import nothing new
            importlib.import_module(module.name)


def _subclasses(cls):
    for subclass in cls.__subclasses__():
        yield subclass
        yield from _subclasses(subclass)


_import_every_module()
STRATEGIES = sorted(
    {c for c in _subclasses(da.Strategy) if c.__module__.startswith("domadapt.") and c.__module__ not in BASE_MODULES},
    key=lambda c: f"{c.__module__}.{c.__qualname__}",
)


def test_discovery_finds_the_built_in_strategies():
    found = {c.__name__ for c in STRATEGIES}
    assert {"DANN", "CDAN", "MMD", "CORAL", "EntropyMinimization", "FineTune", "MimicAugment"} <= found


@pytest.mark.parametrize("strategy_class", STRATEGIES, ids=lambda c: c.__name__)
def test_every_strategy_keeps_the_contract(strategy_class):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the deprecated aliases are covered too
        history = run_strategy_test(strategy_class)
    assert history.history["loss"]
