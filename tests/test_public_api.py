"""The public surface: names, deprecated aliases, public-only imports, packaging, no side effects."""

import ast
import json
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

import domadapt as da

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(da.__file__).resolve().parent


@pytest.mark.parametrize("old, new", [("GradientReversal", "DANN"), ("ConditionalAdversarial", "CDAN")])
def test_old_strategy_names_warn_and_build_the_new_strategy(old, new):
    with pytest.warns(DeprecationWarning, match=f"renamed da.{new}"):
        strategy = getattr(da, old)(hidden_units=(8,))
    assert isinstance(strategy, getattr(da, new))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        getattr(da, new)(hidden_units=(8,))


def test_the_layer_and_the_strategy_are_different_classes():
    assert issubclass(da.layers.GradientReversal, keras.layers.Layer)
    assert not issubclass(da.layers.GradientReversal, da.Strategy)
    assert issubclass(da.DANN, da.Strategy) and issubclass(da.CDAN, da.Strategy)


@pytest.mark.parametrize("old, new", [("GradientReversal", "DANN"), ("ConditionalAdversarial", "CDAN")])
def test_a_config_saved_under_the_old_registered_name_deserialises(old, new):
    strategy = getattr(da, new)(weight=0.3, schedule="constant", hidden_units=(8, 4), dropout=0.1)
    saved = keras.saving.serialize_keras_object(strategy)
    assert saved["registered_name"] == f"domadapt>{new}"
    saved.update(class_name=old, registered_name=f"domadapt>{old}")  # as written by domadapt 0.1.0
    with pytest.warns(DeprecationWarning):
        restored = keras.saving.deserialize_keras_object(saved)
    assert isinstance(restored, getattr(da, new))
    assert (restored.weight, restored.schedule, restored.hidden_units, restored.dropout) == (0.3, "constant", (8, 4), 0.1)


def test_an_adapter_saved_with_the_old_name_loads_with_its_weights(tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="relu")])
    with pytest.warns(DeprecationWarning):
        adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[da.GradientReversal(hidden_units=(8,))])
    adapter.save(tmp_path / "old.keras")
    with pytest.warns(DeprecationWarning):
        reloaded = keras.saving.load_model(tmp_path / "old.keras")
    original = adapter.strategies[0].discriminator.get_weights()
    for a, b in zip(original, reloaded.strategies[0].discriminator.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert isinstance(reloaded.strategies[0], da.DANN)


def test_strategy_base_classes_are_public():
    from domadapt.strategies.base import AdversarialStrategy, Strategy, WeightedStrategy

    assert da.strategies.WeightedStrategy is WeightedStrategy and da.strategies.AdversarialStrategy is AdversarialStrategy
    assert Strategy is da.Strategy and issubclass(da.DANN, AdversarialStrategy) and issubclass(da.MMD, WeightedStrategy)


def _examples(obj):
    return re.findall(r"```python\n(.*?)```", obj.__doc__ or "", re.S)


def test_a_strategy_written_on_the_public_base_classes_trains(capsys):
    from domadapt.strategies.base import AdversarialStrategy, WeightedStrategy

    for base in (WeightedStrategy, AdversarialStrategy):
        namespace = {}
        exec(textwrap.dedent(_examples(base)[0]), namespace)  # the docstring's example, as a user would copy it
        adapter = namespace["adapter"]
        adapter.compile(optimizer="adam")
        rng = np.random.default_rng(0)
        history = adapter.fit(source=(rng.normal(size=(32, 2)), np.arange(32) % 2), target=rng.normal(size=(32, 2)) + 3,
                              epochs=1, batch_size=16, verbose=0)
        reported = set(adapter.strategies[0]._declared_logs())
        assert reported and reported <= set(history.history)
        assert all(np.isfinite(history.history[name][0]) for name in reported)


def _private_imports(path):
    """Imports of private domadapt modules or names (``domadapt._x``, ``domadapt.x._y``, ``from domadapt import _x``)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "domadapt":
            parts = node.module.split(".") + [alias.name for alias in node.names]
            found += [f"{node.module}: {p}" for p in parts if p.startswith("_") and p != "__future__"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("domadapt.") and "._" in a.name]
    return found


def test_recipes_benchmarks_cli_and_demo_import_only_public_modules():
    files = [*(PACKAGE / "recipes").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), PACKAGE / "cli.py",
             PACKAGE / "demo.py", PACKAGE / "datasets.py", PACKAGE / "backbones.py", PACKAGE / "testing.py"]
    offenders = {str(f.relative_to(ROOT)): _private_imports(f) for f in files}
    assert {f: found for f, found in offenders.items() if found} == {}
    assert len(files) >= 10


def test_docstring_examples_use_only_the_public_api():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
            if re.search(r"domadapt(\.\w+)*\._\w+|from domadapt(\.\w+)* import .*\b_\w+", block):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_importing_domadapt_leaves_the_environment_unchanged():
    # Dependencies first: OpenCV's own import edits LD_LIBRARY_PATH; only domadapt's doing counts here.
    script = ("import json, os, tensorflow, keras, albumentations, cv2, scipy; before = dict(os.environ); "
              "import domadapt; print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))")
    environment = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            timeout=300, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


def test_the_wheel_ships_the_built_in_recipes(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "domadapt", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, timeout=300, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("domadapt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    built_in = {f"domadapt/recipes/{p.name}" for p in (PACKAGE / "recipes").glob("*.py")}
    assert {"domadapt/recipes/sunny_to_rainy.py", "domadapt/recipes/few_labels.py"} <= built_in <= names


def test_every_listed_name_resolves_and_every_export_is_listed():
    assert [name for name in da.__all__ if not hasattr(da, name)] == []
    assert set(da._EXPORTS) == set(da.__all__) - {"__version__"}


def test_segmentation_names_are_public():
    from domadapt.strategies.output_adversarial import OutputAdversarial
    from domadapt.tasks import Segmentation

    assert da.OutputAdversarial is da.strategies.OutputAdversarial is OutputAdversarial
    assert da.tasks.Segmentation is Segmentation and da.tasks.get("segmentation") == Segmentation(255)
    # Declared on the classes (no table elsewhere): feature alignment and augmentation serve every task.
    for strategy in (da.DANN, da.MMD, da.CORAL, da.MimicAugment):
        assert strategy.tasks == da.tasks.TASKS, strategy
    assert da.OutputAdversarial.tasks == ("segmentation",)
