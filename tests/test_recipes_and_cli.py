"""Recipes on tiny data, and `domadapt run` through its entry point."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import domadapt as da
from domadapt.cli import built_in_recipes, load_recipe
from domadapt.cli import main as cli_main

RECIPES = Path(da.__file__).resolve().parent / "recipes"


def bn_backbone(size=16):
    return keras.Sequential([
        keras.Input((size, size, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv_top"),
    ])


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    source = (rng.random((32, 16, 16, 3)) * 255).astype("uint8")
    labels = np.arange(32) % 2
    target = (rng.random((24, 16, 16, 3)) * 120 + 60).astype("uint8")
    return source, labels, target


def test_every_recipe_file_defines_a_recipe_with_a_command_line():
    files = sorted(p.stem for p in RECIPES.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(built_in_recipes()) == files
    assert {"sunny_to_rainy", "few_labels", "style_gap", "measure_only", "custom_strategy"} <= set(files)
    for name in files:
        text = (RECIPES / f"{name}.py").read_text()
        assert "def recipe(" in text and '__name__ == "__main__"' in text, name


def fit_recipe(name, tiny, recipe_kwargs=None, callbacks=None, **fit_kwargs):
    source, labels, target = tiny
    module = load_recipe(name)
    keras.utils.set_random_seed(0)
    adapter = da.DomainAdapter(bn_backbone(), num_classes=2, strategies=module.recipe(**(recipe_kwargs or {})))
    adapter.compile(optimizer="adam")
    history = adapter.fit(source=(source, labels), target=target, epochs=1, batch_size=8, verbose=0,
                          callbacks=callbacks, **fit_kwargs)
    return adapter, history


def test_sunny_to_rainy_trains_adversarially_and_adapts_batchnorm_to_the_target(tiny):
    source, _, target = tiny
    adapter, history = fit_recipe("sunny_to_rainy", tiny)
    assert {"domain_loss", "domain_acc", "grl_lambda"} <= set(history.history)
    # BN statistics were re-estimated on target images at the end (AdaBN).
    inputs = keras.Model(adapter.backbone.inputs, adapter.backbone.get_layer("conv").output).predict(target, verbose=0)
    np.testing.assert_allclose(adapter.backbone.get_layer("bn").moving_mean.numpy(), inputs.mean(axis=(0, 1, 2)),
                               rtol=0.05, atol=1e-3)


class _BatchNormMeans(keras.callbacks.Callback):
    """Moving means of the layer "bn" at the end of each epoch (before on_train_end hooks)."""

    def __init__(self):
        super().__init__()
        self.means = []

    def on_epoch_end(self, epoch, logs=None):
        self.means.append(self.model.backbone.get_layer("bn").moving_mean.numpy().copy())


def test_sunny_to_rainy_without_pretrained_weights_trains_batchnorm_statistics(tiny):
    # Frozen BN would keep the random-init statistics (mean exactly 0) all through training.
    means = _BatchNormMeans()
    adapter, history = fit_recipe("sunny_to_rainy", tiny, recipe_kwargs={"pretrained": False}, callbacks=[means])
    assert [type(s).__name__ for s in adapter.strategies] == ["MimicAugment", "DANN"]
    assert np.abs(means.means[-1]).max() > 1e-3
    assert "domain_loss" in history.history


def test_few_labels_weights_labeled_target_images_twice_and_adds_no_discriminator(tiny):
    source, labels, target = tiny
    adapter, history = fit_recipe("few_labels", tiny, target_labeled=(target[:4], np.array([0, 1, 0, 1])))
    total = history.history["loss"][0]
    parts = history.history["cls_loss"][0] + history.history["target_cls_loss"][0]
    assert total == pytest.approx(parts, rel=1e-4)
    # 2 labeled images per class freeze the backbone ("auto"): a domain discriminator's
    # reversed gradient would reach no trainable variable, so the recipe has none.
    assert not any(isinstance(s, da.strategies.AdversarialStrategy) for s in adapter.strategies)
    assert not adapter.backbone.get_layer("conv").trainable


def test_style_gap_takes_references_from_the_target_stream(tiny):
    _, _, target = tiny
    adapter, history = fit_recipe("style_gap", tiny)
    augment = adapter.strategies[0]
    assert all(any(np.array_equal(r, t) for t in target) for r in augment.references)
    assert "mmd_loss" in history.history


def test_custom_strategy_recipe_reports_its_loss_and_balances_predictions(tiny):
    _, history = fit_recipe("custom_strategy", tiny)
    assert {"balance_loss", "entropy_loss", "domain_loss"} <= set(history.history)
    assert 0 <= history.history["balance_loss"][0] < 1.0


def test_measure_only_measures_two_folders(tmp_path, tiny):
    source, _, _ = tiny
    for folder, images in (("a", source), ("b", (source * 0.3).astype("uint8"))):
        (tmp_path / folder).mkdir()
        for i, image in enumerate(images[:6]):
            keras.utils.save_img(tmp_path / folder / f"{i}.png", image, scale=False)
    backbone_path = tmp_path / "bb.keras"
    bn_backbone().save(backbone_path)
    report = load_recipe("measure_only").measure(tmp_path / "a", tmp_path / "b",
                                                                   backbone=str(backbone_path), image_size=16)
    assert report.rows[0]["layer"] == "pixels" and report.rows[0]["mmd"] > 0


def write_folders(root, tiny, empty_class=False):
    source, labels, target = tiny
    for label in (0, 1):
        folder = root / "source" / f"class_{label}"
        folder.mkdir(parents=True)
        if empty_class and label == 1:
            continue
        for i in np.flatnonzero(labels == label)[:8]:
            keras.utils.save_img(folder / f"{i}.png", source[i], scale=False)
    (root / "target").mkdir()
    for i, image in enumerate(target[:10]):
        keras.utils.save_img(root / "target" / f"{i}.png", image, scale=False)


def test_cli_run_writes_classifier_summary_and_plot(tmp_path, tiny, capsys):
    write_folders(tmp_path, tiny)
    backbone_path = tmp_path / "bb.keras"
    bn_backbone().save(backbone_path)
    out = tmp_path / "out"
    arguments = ["run", "sunny_to_rainy", "--source", str(tmp_path / "source"),
                 "--target", str(tmp_path / "target"), "--backbone", str(backbone_path), "--epochs", "1",
                 "--image-size", "16", "--batch-size", "4", "--out", str(out)]
    assert cli_main(arguments) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["class_0", "class_1"]
    # A saved backbone counts as pretrained: its BN statistics are kept, then adapted.
    assert summary["strategies"] == ["MimicAugment", "DANN", "FineTune"]
    assert set(summary["gap_before"]) == {"mmd", "frechet", "proxy_a_distance"}
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
    classifier = keras.saving.load_model(out / "classifier.keras")
    assert classifier.predict(tiny[2][:3], verbose=0).shape == (3, 2)
    # A second run does not replace the files without --overwrite.
    assert cli_main(arguments) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_run_reports_a_missing_folder_and_an_empty_class(tmp_path, tiny, capsys):
    write_folders(tmp_path, tiny, empty_class=True)
    common = ["--target", str(tmp_path / "target"), "--backbone", "pixels-not-a-model", "--out", str(tmp_path / "o")]
    assert cli_main(["run", "few_labels", "--source", str(tmp_path / "missing"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["run", "few_labels", "--source", str(tmp_path / "source"), *common]) == 2
    assert "class_1 holds no readable image" in capsys.readouterr().err
    assert cli_main(["run", "no_such_recipe", "--source", str(tmp_path / "source"), *common]) == 2
    assert "not found" in capsys.readouterr().err
    # A segmentation recipe would silently train a classifier on class folders: refused, nothing written.
    write_folders(tmp_path / "ok", tiny)
    assert cli_main(["run", "scene_segmentation", "--source", str(tmp_path / "ok" / "source"), *common]) == 2
    assert "trains segmentation models" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_cli_lists_built_in_recipes_and_a_local_recipe_comes_first(tmp_path, capsys, monkeypatch):
    assert cli_main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "sunny_to_rainy" in listed and "few_labels" in listed
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "few_labels.py").write_text("def recipe():\n    return []\n")
    monkeypatch.chdir(tmp_path)
    assert load_recipe("few_labels").recipe() == []
    assert load_recipe("sunny_to_rainy").__name__ == "domadapt.recipes.sunny_to_rainy"


# ---------------------------------------------------------------------- segmentation
def _night_scene_mean_iou(seed, strategies):
    """Target mean IoU after training on day scenes with ``strategies`` (night scenes unlabeled)."""
    from domadapt.datasets import shape_scenes as night_scenes

    rng = np.random.default_rng(seed)
    source, target, test = night_scenes(rng, 256), night_scenes(rng, 256, night=True), night_scenes(rng, 128, night=True)
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
                                 keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
                                 keras.layers.Conv2D(32, 3, padding="same", activation="relu")])
    adapter = da.DomainAdapter(backbone, num_classes=3, task=da.tasks.Segmentation(255, upsample_logits=True),
                               strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(3e-3))
    adapter.fit(source=source, target=target[0], epochs=12, batch_size=32, verbose=0, seed=seed)
    return adapter.evaluate(*test, verbose=0, return_dict=True)["mean_iou"]


def test_scene_segmentation_recipe_beats_source_only_mean_iou_at_night():
    # Day scenes -> night scenes rendered by hand (dark, low contrast, noisy), 3 classes + ignored edges.
    # Measured target mean IoU (2-core CPU), source-only -> recipe (night preset p=0.5 + MMD):
    # seed 0: 0.311 -> 0.521, seed 1: 0.342 -> 0.544, seed 2: 0.296 -> 0.515; mean gain over seeds 0-1 0.21.
    module = load_recipe("scene_segmentation")
    assert module.task == "segmentation"
    source_only = [_night_scene_mean_iou(seed, []) for seed in (0, 1)]
    adapted = [_night_scene_mean_iou(seed, module.recipe(seed=seed)) for seed in (0, 1)]
    assert np.mean(adapted) > np.mean(source_only) + 0.10, (source_only, adapted)
    with pytest.raises(ValueError, match="`alignment` must be 'mmd' or 'output'"):
        module.recipe(alignment="dann")
    output = module.recipe(alignment="output").strategies
    assert [type(s).__name__ for s in output] == ["MimicAugment", "OutputAdversarial"]


def test_cli_reads_a_random_subset_of_an_array_target_for_the_label_shift_estimate():
    # The first LABEL_SHIFT_IMAGES images of a class-sorted .npy target were read as the target: a 50/50 mix
    # came out as 100% class 0.
    from domadapt import cli

    class ReadsTheFirstPixel:
        def predict(self, images, batch_size=None, verbose=0):
            return np.eye(2)[images[:, 0, 0, 0].astype(int)]

    images = np.repeat(np.array([0, 1], np.uint8), 500)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    predicted, _ = cli.outputs(ReadsTheFirstPixel(), images, limit=200)
    assert len(predicted) == 200 and 0.4 < predicted[:, 1].mean() < 0.6


def test_cli_refuses_clashing_options_before_any_work(tmp_path, capsys, monkeypatch):
    # compare read the folders with "stretch" when the runs recorded crop and pad; gap computed everything and
    # then refused --plot because --json had just written the same file; adapt-at-test-time adapted before
    # finding that --eval's classes do not match the classifier.
    from PIL import Image

    for name, resize in (("run_a", "crop"), ("run_b", "pad")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "classifier.keras").write_bytes(b"")
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"data": {"image_size": 8, "source": str(tmp_path), "target": str(tmp_path), "resize": resize}}))
    assert cli_main(["compare", str(tmp_path / "run_a"), str(tmp_path / "run_b")]) == 2
    assert "do not record one common resize (['crop', 'pad']); pass --resize" in capsys.readouterr().err
    np.save(tmp_path / "images.npy", np.zeros((6, 8, 8, 3), "uint8"))
    same = tmp_path / "same.png"  # a PNG name: --plot refuses other suffixes first
    assert cli_main(["gap", str(tmp_path / "images.npy"), str(tmp_path / "images.npy"), "--backbone", "pixels",
                     "--json", str(same), "--plot", str(same)]) == 2
    assert "--json and --plot name the same file" in capsys.readouterr().err and not same.exists()
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    model.save(tmp_path / "classifier.keras")
    for name in ("a", "b", "c"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "eval" / name / "0.png")
    _forbid_adapting(monkeypatch)
    assert cli_main(["adapt-at-test-time", str(tmp_path / "classifier.keras"), str(tmp_path / "images.npy"), "--out",
                     str(tmp_path / "adapted"), "--eval", str(tmp_path / "eval")]) == 2
    assert "has 3 class folders but" in capsys.readouterr().err


def _forbid_adapting(monkeypatch):
    """adapt_at_test_time fails the test if called. Patched where it is defined, since the CLI's import of every
    public name (to load a saved model) copies it onto `domadapt`; patched there too, so that copy is undone after
    the test (it leaked the failing stand-in into every later test of test-time adaptation)."""
    import domadapt

    def fail(*args, **kwargs):
        pytest.fail("adapted before the check")

    monkeypatch.setattr(domadapt, "adapt_at_test_time", fail)
    monkeypatch.setattr("domadapt.test_time.adapt_at_test_time", fail)


def test_cli_refuses_a_target_array_scaled_apart_from_the_folders_it_is_scored_with(tmp_path, capsys, monkeypatch):
    # A .npy target in [0, 1] with folders read in [0, 255]: adapt-at-test-time adapted on it and reported --eval's
    # accuracy before and after, compare scored the runs on both; gap and run refused it already.
    from PIL import Image

    rng = np.random.default_rng(0)
    np.save(tmp_path / "scaled.npy", rng.random((8, 8, 8, 3)).astype("float32"))
    for name in ("a", "b"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        for index in range(3):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(tmp_path / "eval" / name / f"{index}.png")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2, activation="softmax")])
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "classifier.keras")
    _forbid_adapting(monkeypatch)
    assert cli_main(["adapt-at-test-time", str(tmp_path / "run" / "classifier.keras"), str(tmp_path / "scaled.npy"),
                     "--out", str(tmp_path / "adapted"), "--eval", str(tmp_path / "eval")]) == 2
    assert "scaled.npy' and " in capsys.readouterr().err.replace("\n", " ")
    (tmp_path / "run" / "summary.json").write_text(json.dumps(
        {"data": {"image_size": 8, "source": str(tmp_path / "eval"), "target": str(tmp_path / "scaled.npy")}}))
    assert cli_main(["compare", str(tmp_path / "run"), "--validators", "entropy"]) == 2
    error = capsys.readouterr().err
    assert "are scaled differently" in error and "multiply" in error and "scaled.npy" in error


def test_overwriting_a_file_keeps_its_mode_and_writes_through_a_symbolic_link(tmp_path):
    # --overwrite renamed a new 0644 file over a private 0600 one, and replaced a link by a plain file.
    import os

    from domadapt.cli import write_json

    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    write_json(private, {"new": 1})
    assert oct(private.stat().st_mode & 0o777) == oct(0o600) and json.loads(private.read_text()) == {"new": 1}
    link = tmp_path / "link.json"
    link.symlink_to(private)
    write_json(link, {"through": 2})
    assert link.is_symlink() and json.loads(private.read_text()) == {"through": 2}
    assert sorted(os.listdir(tmp_path)) == ["link.json", "private.json"]  # no partial file left
