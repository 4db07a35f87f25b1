"""The benchmarks are run by hand, never timed here; this only catches a benchmark module that
no longer imports against the library (a renamed helper), before someone's long run does."""
import importlib
import pkgutil

import pytest

import benchmarks

MODULES = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_module_imports(name):
    importlib.import_module(f"benchmarks.{name}")


def test_every_benchmark_module_is_listed():
    assert {"mask_loop", "reference", "memory", "vision", "fixture"} <= set(MODULES)
