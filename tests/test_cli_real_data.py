"""The command line on real folders, and the backbones' preprocessing.

Commands run in-process through ``domadapt.cli.main`` (TensorFlow is imported once for the whole file); only
what needs a process of its own runs one: the start-up check of the installed `domadapt` entry point (no
TensorFlow import for --help, no TensorFlow log lines), and the SIGKILL tests.
"""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pytest
from PIL import Image

from domadapt.backbones import APPLICATIONS, PREPROCESSING, ImageNetPreprocessing, load_backbone
from domadapt.cli import main as cli_main

DOMADAPT = str(Path(sys.executable).parent / "domadapt")
CLI_FILE = str(Path(__file__).resolve().parents[1] / "domadapt" / "cli.py")
SIZE = 16


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def domadapt(*arguments):
    """Run ``domadapt ARGUMENTS`` in-process, as the entry point would (stdout is not a terminal)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = cli_main([str(argument) for argument in arguments])
        except SystemExit as exit_:
            code = exit_.code
    return Result(code, stdout.getvalue(), stderr.getvalue())


def entry_point(*arguments, timeout=120, **environment):
    """Run the installed entry point in a process of its own, as a user would (stdout is a pipe)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"} | environment
    return subprocess.run([DOMADAPT, *map(str, arguments)], capture_output=True, text=True, timeout=timeout, env=env)


def write_images(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index}.png")


def noise(count, low, high, seed):
    return np.random.default_rng(seed).integers(low, high, (count, SIZE, SIZE, 3)).astype("uint8")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Learnable source (dark class vs bright class), a low-contrast target, a labeled target, a tiny backbone."""
    root = tmp_path_factory.mktemp("real")
    for domain, (spread, offset) in {"source": (1.0, 0), "eval": (0.4, 80)}.items():
        for label, (low, high) in enumerate(((0, 100), (150, 256))):
            images = (noise(12, low, high, seed=label + 10 * len(domain)) * spread + offset).astype("uint8")
            write_images(root / domain / f"class_{label}", images)
    target = np.concatenate([noise(10, 0, 100, 5), noise(10, 150, 256, 6)])
    write_images(root / "target", (target * 0.4 + 80).astype("uint8"))
    (root / "target" / "truncated.png").write_bytes((root / "target" / "0.png").read_bytes()[:40])
    backbone = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                                 keras.layers.Conv2D(8, 3, activation="relu", name="conv")])
    backbone.save(root / "backbone.keras")
    return root


def run_arguments(root, out, *extra, epochs=1):
    return ["run", "sunny_to_rainy", "--source", root / "source", "--target", root / "target", "--backbone",
            root / "backbone.keras", "--epochs", epochs, "--image-size", SIZE, "--batch-size", 8, "--out", out, *extra]


def test_help_imports_no_tensorflow_and_a_command_prints_no_tensorflow_log_lines(folders):
    for command in ([], ["gap"], ["run"], ["compare"]):
        started = time.perf_counter()
        result = entry_point(*command, "--help", PYTHONPROFILEIMPORTTIME="1")
        elapsed = time.perf_counter() - started
        assert result.returncode == 0 and "usage: domadapt" in result.stdout
        imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
        assert "domadapt.cli" in imported and "tensorflow" not in imported and "keras" not in imported, command
        assert elapsed < 3.0, (command, elapsed)  # TensorFlow alone takes 3-6 s to import here
    assert "doubles the training time" in entry_point("run", "--help").stdout
    # A command that imports TensorFlow, through the entry point: its C++ start-up lines stay hidden.
    quiet = entry_point("gap", folders / "source", folders / "target", "--backbone", "pixels", "--image-size", SIZE,
                        "--permutations", 20, "--metrics", "mmd")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "shift detected" in quiet.stdout and "Traceback" not in quiet.stderr
    assert "oneDNN" not in quiet.stderr and "cuda" not in quiet.stderr.lower(), quiet.stderr


def test_gap_gives_a_verdict_skips_a_truncated_file_and_streams_every_image(folders, tmp_path):
    root = folders
    shifted = domadapt("gap", root / "source", root / "target", "--backbone", root / "backbone.keras",
                       "--image-size", SIZE, "--permutations", 200, "--json", tmp_path / "gap.json")
    assert shifted.returncode == 0, shifted.stderr[-2000:]
    assert "shift detected, p <= 0.005" in shifted.stdout  # 1/(1+200): no permutation beat the observed MMD
    assert "Skipped 1 unreadable file in" in shifted.stdout and "truncated.png" in shifted.stdout
    table = json.loads((tmp_path / "gap.json").read_text())
    assert table["verdict"].startswith("shift detected") and table["mmd_test"]["p_value"] < 0.01
    assert table["skipped"] == {"source": 0, "target": 1} and table["num_target"] == 20
    assert table["mmd_test"]["num_source"] == 24 and table["mmd_test"]["num_target"] == 20
    # --max-images: a seeded subset of each folder; --max-samples: the layer profile on a subset of those, the shift
    # test on the features of every image used, streamed.
    subset = domadapt("gap", root / "source", root / "target", "--backbone", root / "backbone.keras", "--image-size",
                      SIZE, "--permutations", 20, "--max-images", 8, "--max-samples", 5, "--json", tmp_path / "sub.json")
    assert subset.returncode == 0, subset.stderr[-2000:]
    table = json.loads((tmp_path / "sub.json").read_text())
    assert table["num_source"] == 5 and table["mmd_test"]["num_source"] == 8 and table["mmd_test"]["num_target"] == 8
    assert "8 source and 8 target images" in subset.stdout and "layer profile on a random 5 per domain" in subset.stdout
    same = domadapt("gap", root / "source", root / "source", "--backbone", root / "backbone.keras",
                    "--image-size", SIZE, "--permutations", 200)
    assert "no significant shift, p = 1" in same.stdout
    strict = domadapt("gap", root / "source", root / "target", "--backbone", "pixels", "--image-size", SIZE, "--strict")
    assert strict.returncode == 2 and "truncated.png" in strict.stderr and "Traceback" not in strict.stderr
    assert len(strict.stderr.strip().splitlines()) == 1
    folder = domadapt("gap", root / "source", root / "target", "--backbone", "pixels", "--image-size", SIZE,
                      "--json", tmp_path, "--overwrite")  # a folder: refused, and not with "pass --overwrite"
    assert folder.returncode == 2 and "is a folder; expected a file path" in folder.stderr, folder.stderr


def _not_in_memory(*arguments, **options):
    raise AssertionError("a command read a whole folder into memory instead of streaming it")


@pytest.fixture(scope="module")
def evaluated_run(folders):
    out = folders / "run_eval"
    with pytest.MonkeyPatch.context() as patch:  # every folder is streamed: the in-memory readers are never called
        for module in ("domadapt.folders", "domadapt.datasets"):
            patch.setattr(f"{module}.read_images", _not_in_memory)
            patch.setattr(f"{module}.read_labeled_folder", _not_in_memory)
        result = domadapt(*run_arguments(folders, out, "--eval", folders / "eval", "--tensorboard", folders / "tb",
                                         "--export-label-shift", folders / "label_shift.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_run_with_eval_reports_adapted_and_source_only_target_accuracy(evaluated_run):
    out, result = evaluated_run
    summary = json.loads((out / "summary.json").read_text())
    target = summary["accuracy"]["target"]
    assert set(target) == {"adapted", "source_only"} and all(0 <= v <= 1 for v in target.values())
    assert f"target accuracy: adapted {target['adapted']:.1%}, source-only {target['source_only']:.1%}" in result.stdout
    # Both classifiers are saved, and the printed accuracy is what the saved model scores.
    (images, labels), = [_read_eval(out, summary)]
    for name, file in (("adapted", "classifier.keras"), ("source_only", "source_only.keras")):
        predictions = keras.saving.load_model(out / file).predict(images, verbose=0).argmax(-1)
        assert np.mean(predictions == labels) == pytest.approx(target[name])
    assert summary["skipped"]["target"] == 1 and "truncated.png" in (out / "skipped.txt").read_text()
    assert summary["data"]["source"].endswith("source")
    # Not a terminal: one line per epoch, no progress bar redrawn with carriage returns.
    assert "\r" not in result.stdout and "━" not in result.stdout
    assert not (out / ".domadapt-resume").exists()
    assert summary["data"]["num_images"] == {"source": 24, "target": 20, "target_labeled": 0, "eval": 24}


def test_run_prints_and_exports_the_estimated_target_class_mix(evaluated_run, folders):
    out, result = evaluated_run
    exported = json.loads((folders / "label_shift.json").read_text())
    assert exported["class_names"] == ["class_0", "class_1"]
    assert sum(exported["target_proportions"]) == pytest.approx(1.0)
    assert exported["source_proportions"] == pytest.approx([0.5, 0.5])  # 12 images per class
    assert exported["num_target"] == 20 and 0 <= exported["p_value"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["label_shift"]["target_proportions"] == pytest.approx(exported["target_proportions"])
    mix = ", ".join(f"{n} {q:.2f}" for n, q in zip(exported["class_names"], exported["target_proportions"]))
    assert f"Estimated target class mix (20 target images, bbse" in result.stdout and mix in result.stdout
    # The verdict line names classes by their folder names.
    assert re.search(r"(Label shift: class mix|warning: class mix differs: class_[01] ~)", result.stdout)
    refused = domadapt(*run_arguments(folders, folders / "another_run", "--export-label-shift",
                                      folders / "label_shift.json"))
    assert refused.returncode == 2 and "label_shift.json exists; pass --overwrite" in refused.stderr
    assert not (folders / "another_run").exists()


def _read_eval(out, summary):
    from domadapt.datasets import read_labeled_folder

    images, labels, _ = read_labeled_folder(summary["data"]["eval"], (SIZE, SIZE))
    return images, labels


def test_tensorboard_logs_every_loss_term(evaluated_run, folders):
    import tensorflow as tf

    out, _ = evaluated_run
    history = json.loads((out / "summary.json").read_text())["history"]
    tags = set()
    for file in (folders / "tb" / "adapted" / "train").glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(file)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags |= {value.tag for value in event.summary.value}
    losses = {name for name in history if name.endswith("loss")}
    assert {"cls_loss", "domain_loss"} <= losses
    assert {f"epoch_{name}" for name in losses} <= tags


def test_gap_with_a_classifier_estimates_the_target_class_mix(evaluated_run, folders, tmp_path):
    out, _ = evaluated_run
    result = domadapt("gap", folders / "eval", folders / "target", "--backbone", "pixels", "--image-size", SIZE,
                      "--permutations", 20, "--metrics", "mmd", "--classifier", out / "classifier.keras",
                      "--json", tmp_path / "gap.json", "--export-label-shift", tmp_path / "mix.json")
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((tmp_path / "gap.json").read_text())
    exported = json.loads((tmp_path / "mix.json").read_text())
    assert table["label_shift"]["target_proportions"] == pytest.approx(exported["target_proportions"])
    assert exported["class_names"] == ["class_0", "class_1"] and exported["num_source"] == 24
    assert "Estimated target class mix (20 target images, bbse): class_0" in result.stdout


def test_adapt_at_test_time_streams_the_target_folder(folders, tmp_path):
    classifier = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                                   keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(name="bn"),
                                   keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2, activation="softmax")])
    classifier.save(tmp_path / "classifier.keras")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("domadapt.folders.read_images", _not_in_memory)
        patch.setattr("domadapt.datasets.read_images", _not_in_memory)
        result = domadapt("adapt-at-test-time", tmp_path / "classifier.keras", folders / "target", "--out",
                          tmp_path / "adapted", "--method", "norm", "--eval", folders / "eval")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "adapted" / "summary.json").read_text())
    assert summary["num_target_images"] == 20 and "truncated.png" in result.stdout  # 21 files, one skipped
    assert 0 <= summary["eval_accuracy_before"] <= 1 and 0 <= summary["eval_accuracy_after"] <= 1
    adapted = keras.saving.load_model(tmp_path / "adapted" / "classifier.keras")
    from domadapt.datasets import read_images

    target = read_images(folders / "target", (SIZE, SIZE))
    assert adapted.predict(target, verbose=0).shape == (20, 2)
    # The target's batch-norm statistics replaced the source's.
    assert not np.allclose(adapted.get_layer("bn").moving_mean.numpy(), classifier.get_layer("bn").moving_mean.numpy())


def test_compare_ranks_runs_on_the_data_they_recorded(evaluated_run, folders, tmp_path):
    out, _ = evaluated_run
    import shutil

    other = tmp_path / "copy_of_run"
    shutil.copytree(out, other)
    result = domadapt("compare", out, other, "--json", tmp_path / "compare.json",
                      "--validators", "source_accuracy", "entropy", "information_maximization")
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads((tmp_path / "compare.json").read_text())
    assert table["recommended"] in {"run_eval", "copy_of_run"} and set(table["scores"]) == {"run_eval", "copy_of_run"}
    assert "recommended" in result.stdout and "Scoring 2 runs on 24 source images" in result.stdout
    missing = domadapt("compare", out, tmp_path / "nothing")
    assert missing.returncode == 2 and "holds no classifier.keras" in missing.stderr and "Traceback" not in missing.stderr


def test_a_run_that_did_not_learn_says_so(folders, tmp_path):
    # Four classes of the same noise: nothing to learn, source accuracy stays near chance (25%).
    for label in range(4):
        write_images(tmp_path / "source" / f"class_{label}", noise(6, 0, 256, seed=100 + label))
    (tmp_path / "target").symlink_to(folders / "target")
    result = domadapt("run", "few_labels", "--source", tmp_path / "source", "--target", tmp_path / "target",
                      "--backbone", folders / "backbone.keras", "--epochs", 1, "--image-size", SIZE, "--out",
                      tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["learned"] is False
    assert "warning: training did not learn" in result.stderr and "chance (25.0% for 4 classes)" in result.stderr


def test_sigkill_inside_an_atomic_write_leaves_the_previous_file_whole(tmp_path):
    (tmp_path / "summary.json").write_text('{"run": 1}')
    # domadapt/cli.py imports only the standard library at its top: loaded alone, the process starts at once.
    script = ("import os, signal, importlib.util as u; "
              f"spec = u.spec_from_file_location('cli', {CLI_FILE!r}); cli = u.module_from_spec(spec); "
              "spec.loader.exec_module(cli); "
              f"cli.write_atomically({str(tmp_path / 'summary.json')!r}, lambda temporary: (temporary.write_text('{{\"ru'), "
              "os.kill(os.getpid(), signal.SIGKILL)))")
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "summary.json").read_text()) == {"run": 1}
    (partial,) = [p.name for p in tmp_path.iterdir() if p.name != "summary.json"]
    assert partial.startswith(".summary.json.") and ".partial" in partial  # hidden, named as unfinished


def test_run_killed_mid_training_leaves_only_complete_files_then_resumes(folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    process = subprocess.Popen([DOMADAPT, *map(str, run_arguments(folders, out, epochs=3))], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    backup = out / ".domadapt-resume" / "adapted" / "training_metadata.json"
    while process.poll() is None and time.monotonic() < deadline:  # killed once an epoch is backed up
        if backup.exists():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    _assert_every_file_complete(out)

    refused = domadapt(*run_arguments(folders, out, epochs=3))
    assert refused.returncode == 2 and "--resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    resumed = domadapt(*run_arguments(folders, out, "--resume", epochs=3))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(r"Resuming the run in .* \([12] of 3 adapted\)", resumed.stdout), resumed.stdout
    _assert_every_file_complete(out)
    assert {p.name for p in out.iterdir()} == {"notes.txt", "classifier.keras", "summary.json", "training.png",
                                               "skipped.txt"}
    # A new run over it, on a seeded subset (5 images per class, 5 target images) with a few labeled target images.
    again = domadapt(*run_arguments(folders, out, "--overwrite", "--max-images", 5, "--target-labeled",
                                    folders / "eval"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not write
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 1 and "target_cls_loss" in summary["history"]
    assert summary["data"]["num_images"] == {"source": 10, "target": 5, "target_labeled": 10, "eval": 0}


def _assert_every_file_complete(out):
    for path in out.rglob("*"):
        if path.is_dir() or ".domadapt-resume" in path.parts or path.name == "notes.txt":
            continue  # the resume backups: Keras' BackupAndRestore keeps a previous copy of each (double_checkpoint)
        assert ".partial" not in path.name or path.name.startswith("."), path
        if ".partial" in path.name:
            continue  # hidden, named as unfinished: never mistaken for an output
        if path.suffix == ".keras":
            keras.saving.load_model(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif path.suffix == ".txt":
            assert path.read_text().endswith("\n")


# --- backbones: the family's preprocessing inside the model ----------------------------------------------------------


@pytest.mark.parametrize("family", sorted(set(APPLICATIONS.values())))
def test_each_family_preprocessing_is_its_own_preprocess_input(family):
    module = sys.modules[getattr(keras.applications, family).__module__]
    probe = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = module.preprocess_input(probe.copy())
    mode = PREPROCESSING[family]
    if mode is None:  # the model rescales its own input: preprocess_input is the identity
        np.testing.assert_array_equal(expected, probe)
    else:
        np.testing.assert_allclose(ImageNetPreprocessing(mode)(probe), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "resnet50v2", "mobilenetv2", "mobilenetv3small", "efficientnetb0",
                                  "densenet121"])
def test_a_backbone_with_a_local_weights_file_sees_preprocessed_pixels(name, tmp_path):
    constructor = getattr(keras.applications, APPLICATIONS[name])
    keras.utils.set_random_seed(0)
    plain = constructor(include_top=False, weights=None, input_shape=(32, 32, 3))
    plain.save_weights(tmp_path / "plain.weights.h5")
    backbone = load_backbone(name, weights=tmp_path / "plain.weights.h5", input_shape=(32, 32, 3))
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    # Eager calls, not predict(): tracing a predict function costs seconds per model, a forward pass a fraction.
    expected = np.asarray(plain(sys.modules[constructor.__module__].preprocess_input(pixels.copy()), training=False))
    features = np.asarray(backbone(pixels, training=False))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    backbone.save(tmp_path / "backbone.keras")  # the preprocessing layer saves and loads with the model
    reloaded = keras.saving.load_model(tmp_path / "backbone.keras")
    np.testing.assert_allclose(np.asarray(reloaded(pixels, training=False)), features, rtol=1e-6)


def test_a_weights_file_of_another_architecture_is_a_clear_error(tmp_path):
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ValueError, match="Could not load the weights file .* into a headless MobileNetV2"):
        load_backbone("mobilenetv2", weights=tmp_path / "other.weights.h5", input_shape=(32, 32, 3))


# --- silent mistakes, caught before training ---------------------------------------------------------------------------


def small_backbone(shape=(8, 8, 3)):
    return keras.Sequential([keras.Input(shape), keras.layers.Conv2D(4, 3, activation="relu")])


@pytest.mark.parametrize("head", [
    lambda: keras.Sequential([keras.layers.Dense(8), keras.layers.Dense(2, activation="softmax")]),
    lambda: keras.Sequential([keras.layers.Dense(2), keras.layers.Softmax()]),
])
def test_a_head_ending_in_softmax_inside_a_sequential_is_refused(head):
    import domadapt as da

    with pytest.raises(ValueError, match="Argument `head` must output logits; its last layer .* applies a softmax"):
        da.DomainAdapter(small_backbone(), head=head())


def test_a_backbone_with_its_classifier_top_is_refused():
    import domadapt as da

    with_top = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, include_top=True, classes=5)
    with pytest.raises(ValueError, match="`backbone` ends in a classifier .*include_top=False"):
        da.DomainAdapter(with_top, num_classes=2)


def test_domains_scaled_255x_apart_or_of_different_sizes_fail_before_training():
    import domadapt as da

    rng = np.random.default_rng(0)
    source = (rng.random((8, 8, 8, 3)) * 255).astype("uint8"), np.arange(8) % 2
    adapter = da.DomainAdapter(small_backbone(), num_classes=2, strategies=[da.MMD()])
    adapter.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"`target` and `source` are scaled differently.*multiply `target` by 255"):
        adapter.fit(source=source, target=rng.random((8, 8, 8, 3)).astype("float32"), epochs=1, verbose=0)
    adapter.fit(source=source, target=(rng.random((8, 8, 8, 3)) * 40).astype("uint8"), epochs=1, verbose=0)  # dark, fine
    any_size = da.DomainAdapter(small_backbone((None, None, 3)), num_classes=2, strategies=[da.MMD()])
    any_size.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"`source` images of shape \(8, 8, 3\), `target` images of shape \(12, 12, 3\)"):
        any_size.fit(source=source, target=np.full((8, 12, 12, 3), 100, "uint8"), epochs=1, verbose=0)


def test_backup_metadata_survives_a_crash_mid_write(tmp_path, monkeypatch):
    """da.callbacks.BackupAndRestore (what `domadapt run` uses): the metadata is replaced atomically.

    The SIGKILL test above once killed Keras' own callback between truncating training_metadata.json and
    writing it; the resume then failed with "Expecting value" (an empty JSON file)."""
    import domadapt as da
    import domadapt.callbacks as callbacks_module

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")

    def interrupted_save(callback_class, folder):
        callback = callback_class(str(folder), double_checkpoint=True)
        callback.set_model(model)
        callback._current_epoch, callback._last_batch_seen = 1, 0
        callback._save_model()
        callback._current_epoch = 2

        def crash(*args, **kwargs):
            raise KeyboardInterrupt  # the process dies while the metadata is being written

        monkeypatch.setattr(json, "dumps", crash)
        with pytest.raises(KeyboardInterrupt):
            callback._save_model()
        monkeypatch.undo()
        return (folder / "training_metadata.json").read_text()

    assert interrupted_save(keras.callbacks.BackupAndRestore, tmp_path / "keras") == ""  # Keras: truncated
    kept = interrupted_save(da.callbacks.BackupAndRestore, tmp_path / "domadapt")
    assert json.loads(kept) == {"epoch": 1, "batch": 0}
    assert not [p for p in (tmp_path / "domadapt").iterdir() if ".partial" in p.name]  # no temporary file left
    assert callbacks_module.BackupAndRestore.__mro__[1] is keras.callbacks.BackupAndRestore


def test_fit_with_an_emptied_keras_backup_says_which_file_and_what_to_do(tmp_path):
    """Keras' own callback can leave an empty metadata file (see above): fit names it instead of a JSON error."""
    import domadapt as da

    backbone = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    adapter = da.DomainAdapter(backbone, num_classes=2)
    adapter.compile(optimizer="adam")
    (tmp_path / "training_metadata.json").write_text("")
    backup = keras.callbacks.BackupAndRestore(str(tmp_path))
    source = (np.random.rand(16, 2).astype("float32"), np.random.randint(0, 2, 16))
    with pytest.raises(ValueError, match=r"`callbacks`: the BackupAndRestore metadata .*training_metadata.json.* unreadable"):
        adapter.fit(source=source, epochs=1, verbose=0, callbacks=[backup])
    assert (tmp_path / "training_metadata.json").read_text() == ""  # the user's file is left as it was


def test_backup_to_a_remote_folder_writes_its_metadata_there(tmp_path, monkeypatch):
    """gs://, s3://, ram:// folders: Keras' file_utils writes there; os/tempfile would write a local 'ram:' folder."""
    import tensorflow as tf

    import domadapt as da

    monkeypatch.chdir(tmp_path)
    folder = "ram://domadapt-backup-test"
    adapter = da.DomainAdapter(keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)]), num_classes=2)
    adapter.compile(optimizer="adam")
    source = (np.random.rand(16, 2).astype("float32"), np.random.randint(0, 2, 16))
    adapter.fit(source=source, epochs=2, verbose=0,
                callbacks=[da.callbacks.BackupAndRestore(folder, delete_checkpoint=False)])
    assert "training_metadata.json" in tf.io.gfile.listdir(folder)
    text = tf.io.gfile.GFile(f"{folder}/training_metadata.json").read()
    assert json.JSONDecoder().raw_decode(text)[0]["epoch"] == 1  # (TF's ram:// keeps old bytes after a rewrite)
    assert list(tmp_path.iterdir()) == []  # nothing written locally


def test_a_run_refused_for_its_inputs_leaves_the_previous_results_untouched(folders, tmp_path):
    """A [0, 1] target against a [0, 255] source, or a backbone of another image size: refused before --out is
    cleared (the old classifier.keras and summary.json were deleted first, and the corrected rerun then asked
    for --resume)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "classifier.keras").write_bytes(b"earlier model")
    (out / "summary.json").write_text("{}")
    target = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((folders / "target").glob("[0-9]*.png"))])
    np.save(tmp_path / "target01.npy", target.astype("float32") / 255)
    scaled = domadapt(*run_arguments(folders, out, "--overwrite")[:5], tmp_path / "target01.npy",
                      *run_arguments(folders, out, "--overwrite")[6:])
    assert scaled.returncode == 2 and "scaled differently" in scaled.stderr, scaled.stderr[-800:]
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)]).save(tmp_path / "backbone32.keras")
    arguments = run_arguments(folders, out, "--overwrite")
    arguments[arguments.index(folders / "backbone.keras")] = tmp_path / "backbone32.keras"
    sized = domadapt(*arguments)
    assert sized.returncode == 2 and "takes images of shape (32, 32, 3)" in sized.stderr and "--image-size 32" in \
        sized.stderr, sized.stderr[-800:]
    assert (out / "classifier.keras").read_bytes() == b"earlier model" and (out / "summary.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["classifier.keras", "summary.json"]  # no resume folder either


def test_a_file_name_that_is_not_utf8_is_listed_not_a_crash(tmp_path):
    """Latin-1 names (bytes Python keeps as surrogates) stopped `run` with UnicodeEncodeError writing skipped.txt."""
    from domadapt.cli import _report_skipped, _skipped_text

    name = os.fsdecode(b"caf\xe9.png")
    text = _skipped_text([(tmp_path / name, "cannot identify image file")])
    (tmp_path / "skipped.txt").write_text(text)  # would raise before
    assert "caf\\udce9.png\tcannot identify" in text
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        _report_skipped([(name, "bad")], "the target folder")
    stdout.getvalue().encode("utf-8")


def test_the_backup_removes_only_its_own_files_when_training_ends(tmp_path):
    """Keras' BackupAndRestore removes its whole backup_dir at the end; a folder the user keeps files in lost them."""
    import domadapt as da

    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".training_metadata.x1.partial").write_text("")  # left by a process killed mid-write
    adapter = da.DomainAdapter(keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)]), num_classes=2)
    adapter.compile(optimizer="adam")
    source = (np.random.rand(16, 2).astype("float32"), np.random.randint(0, 2, 16))
    adapter.fit(source=source, epochs=2, verbose=0,
                callbacks=[da.callbacks.BackupAndRestore(str(tmp_path), double_checkpoint=True)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    empty = tmp_path / "backup"
    adapter.fit(source=source, epochs=2, verbose=0, callbacks=[da.callbacks.BackupAndRestore(str(empty))])
    assert not empty.exists()  # its own folder, emptied: removed as Keras does
