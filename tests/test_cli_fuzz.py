"""The command line on malformed input: exit code 2, one clear line naming the argument or the file, nothing overwritten.

Every case runs ``domadapt.cli.main(argv)`` in-process (no subprocess: TensorFlow is imported once) on
8x8 images and a one-layer backbone, so the whole file takes seconds, not minutes.
"""

import hashlib
import io
import json

import keras
import numpy as np
import pytest
from PIL import Image

from domadapt.cli import main as cli_main

SIZE = 8


def png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Folders and files a user might point the command line at, good and bad."""
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    for name, (low, high) in {"class_a": (0, 100), "class_b": (150, 256)}.items():
        for index in range(4):
            png(root / "source" / name / f"{index}.png", rng.integers(low, high, (SIZE, SIZE, 3)).astype("uint8"))
    for index in range(4):
        png(root / "target" / f"{index}.png", rng.integers(60, 200, (SIZE, SIZE, 3)).astype("uint8"))
    (root / "empty").mkdir()
    png(root / "single" / "only.png", np.zeros((SIZE, SIZE, 3), "uint8"))
    for index in range(3):  # the gap's domain classifier needs 4 per folder: an error that named `source_images` before
        png(root / "three" / f"{index}.png", np.full((SIZE, SIZE, 3), 40 * index, "uint8"))
    (root / "corrupt").mkdir()
    (root / "corrupt" / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    (root / "corrupt" / "text.jpg").write_bytes(b"this is not a jpeg")
    (root / "corrupt" / "truncated.png").write_bytes((root / "target" / "0.png").read_bytes()[:30])
    for name in ("class_a", "class_b"):
        (root / "corrupt_labeled" / name).mkdir(parents=True)
        (root / "corrupt_labeled" / name / "bad.png").write_bytes(b"not a png")
    png(root / "one_class" / "class_a" / "0.png", np.zeros((SIZE, SIZE, 3), "uint8"))
    png(root / "one_class" / "class_a" / "1.png", np.full((SIZE, SIZE, 3), 255, "uint8"))
    for name in ("class_x", "class_y"):  # other class names than the source's
        png(root / "other_classes" / name / "0.png", np.full((SIZE, SIZE, 3), 90, "uint8"))
    (root / "non_images").mkdir()
    (root / "non_images" / "notes.txt").write_text("holiday photos, see the other drive")
    (root / "non_images" / "table.csv").write_text("a,b\n1,2\n")
    (root / "zero_bytes").mkdir()
    for name in ("a.png", "b.jpg", "c.webp"):
        (root / "zero_bytes" / name).write_bytes(b"")
    # Pixel formats that must all be read (the one good case among the bad): grey, RGBA, 16-bit grey.
    png(root / "mixed" / "grey.png", rng.integers(0, 256, (SIZE, SIZE)).astype("uint8"), "L")
    png(root / "mixed" / "rgba.png", rng.integers(0, 256, (SIZE, SIZE, 4)).astype("uint8"), "RGBA")
    png(root / "mixed" / "grey16.png", rng.integers(0, 65536, (12, 10)).astype("uint16"))
    png(root / "mixed" / "rgb.png", rng.integers(0, 256, (SIZE, SIZE, 3)).astype("uint8"))
    keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(2, 3)]).save(root / "backbone.keras")
    (root / "not_a_model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "existing.json").write_text('{"mine": true}')
    (root / "existing.png").write_bytes(b"a picture of mine")
    (root / "existing_run").mkdir()
    (root / "existing_run" / "summary.json").write_text('{"an earlier run": true}')
    (root / "existing_run" / "notes.txt").write_text("mine")
    (root / "fake_run").mkdir()
    (root / "fake_run" / "classifier.keras").write_bytes(b"not a model")
    (root / "fake_run" / "summary.json").write_text("{not json")
    (root / "model_less_run").mkdir()
    (root / "model_less_run" / "classifier.keras").write_bytes(b"not a model")
    return root


def snapshot(root):
    """Every file's content hash and modification time."""
    return {str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(root.rglob("*")) if path.is_file()}


RUN = ["run", "few_labels", "--image-size", str(SIZE), "--epochs", "1", "--backbone", "{root}/backbone.keras"]
GAP = ["gap", "--image-size", str(SIZE), "--backbone", "pixels", "--permutations", "20"]

# (argv, words the error line must contain). "{root}" is the fixture folder; "{fresh}" a new --out path.
CASES = {
    # folders
    "gap missing source": (GAP + ["{root}/missing", "{root}/target"], ["missing", "does not exist"]),
    "gap missing target": (GAP + ["{root}/source", "{root}/nowhere"], ["nowhere", "does not exist"]),
    "gap empty folder": (GAP + ["{root}/empty", "{root}/target"], ["empty", "no readable image", "no image files"]),
    "gap only corrupt files": (GAP + ["{root}/source", "{root}/corrupt"], ["corrupt", "none readable"]),
    "gap non-image files": (GAP + ["{root}/source", "{root}/non_images"], ["non_images", "no image files"]),
    "gap zero-byte files": (GAP + ["{root}/zero_bytes", "{root}/target"], ["zero_bytes", "none readable"]),
    "gap a file, not a folder": (GAP + ["{root}/existing.json", "{root}/target"], ["existing.json"]),
    "gap strict with corrupt": (GAP + ["{root}/source", "{root}/corrupt", "--strict"], ["corrupt"]),
    "run missing source": (RUN + ["--source", "{root}/missing", "--target", "{root}/target", "--out", "{fresh}"],
                           ["missing", "does not exist"]),
    "run empty source": (RUN + ["--source", "{root}/empty", "--target", "{root}/target", "--out", "{fresh}"],
                         ["empty", "no class sub-folders"]),
    "run source of loose files": (RUN + ["--source", "{root}/target", "--target", "{root}/target", "--out", "{fresh}"],
                                  ["target", "no class sub-folders"]),
    "run corrupt classes": (RUN + ["--source", "{root}/corrupt_labeled", "--target", "{root}/target", "--out",
                                   "{fresh}"], ["class_a", "none readable"]),
    "run one class": (RUN + ["--source", "{root}/one_class", "--target", "{root}/target", "--out", "{fresh}"],
                      ["one_class", "at least two classes"]),
    "run empty target": (RUN + ["--source", "{root}/source", "--target", "{root}/empty", "--out", "{fresh}"],
                         ["empty", "no readable image"]),
    "run a single target image": (RUN + ["--source", "{root}/source", "--target", "{root}/single", "--out",
                                         "{fresh}"], ["single", "1 usable image(s)", "at least 2"]),
    "gap a single image": (GAP + ["{root}/single", "{root}/target"], ["single", "at least 4"]),
    "gap three images": (GAP + ["{root}/three", "{root}/target"], ["three", "3 usable image(s)", "at least 4"]),
    "gap max samples 3": (GAP + ["{root}/source", "{root}/target", "--max-samples", "3"], ["--max-samples", ">= 4"]),
    "run corrupt target": (RUN + ["--source", "{root}/source", "--target", "{root}/corrupt", "--out", "{fresh}"],
                           ["corrupt", "none readable"]),
    "run mismatched target-labeled classes": (
        RUN + ["--source", "{root}/source", "--target", "{root}/target", "--target-labeled", "{root}/other_classes",
               "--out", "{fresh}"], ["other_classes", "class_x", "not among the expected classes"]),
    "run mismatched eval classes": (
        RUN + ["--source", "{root}/source", "--target", "{root}/target", "--eval", "{root}/other_classes",
               "--out", "{fresh}"], ["other_classes", "not among the expected classes"]),
    # flags
    "run negative epochs": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--epochs", "-3",
                                   "--out", "{fresh}"], ["--epochs"]),
    "run batch size 0": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--batch-size", "0",
                                "--out", "{fresh}"], ["--batch-size"]),
    "run epochs not a number": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--epochs", "two",
                                       "--out", "{fresh}"], ["--epochs", "two"]),
    "run max-images 0": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--max-images", "0",
                                "--out", "{fresh}"], ["--max-images"]),
    "run unknown recipe": (["run", "no_such_recipe", "--source", "{root}/source", "--target", "{root}/target",
                            "--out", "{fresh}"], ["no_such_recipe", "not found"]),
    "run unknown backbone": (["run", "few_labels", "--image-size", str(SIZE), "--source", "{root}/source", "--target",
                              "{root}/target", "--backbone", "no_such_backbone", "--out", "{fresh}"],
                             ["no_such_backbone"]),
    "run a backbone file that is no model": (
        ["run", "few_labels", "--image-size", str(SIZE), "--source", "{root}/source", "--target", "{root}/target",
         "--backbone", "{root}/not_a_model.keras", "--out", "{fresh}"], ["not_a_model.keras"]),
    "run bad resize": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--resize", "squash",
                              "--out", "{fresh}"], ["--resize", "squash"]),
    "run image size too small": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--image-size", "2",
                                        "--out", "{fresh}"], ["--image-size"]),
    "run out exists": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--out",
                              "{root}/existing_run"], ["existing_run", "--overwrite"]),
    "run out is a file": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--out",
                                 "{root}/existing.json"], ["existing.json", "is a file"]),
    "adapt out is a file": (["adapt-at-test-time", "{root}/backbone.keras", "{root}/target", "--out",
                             "{root}/existing.json"], ["existing.json", "is a file"]),
    "run resume without a run": (RUN + ["--source", "{root}/source", "--target", "{root}/target", "--resume",
                                        "--out", "{fresh}"], ["--resume", "no interrupted run"]),
    "run label-shift export exists": (RUN + ["--source", "{root}/source", "--target", "{root}/target",
                                             "--export-label-shift", "{root}/existing.json", "--out", "{fresh}"],
                                      ["existing.json", "--overwrite"]),
    "gap unknown backbone": (["gap", "{root}/source", "{root}/target", "--image-size", str(SIZE), "--backbone",
                              "no_such_backbone"], ["no_such_backbone"]),
    "gap unknown metric": (GAP + ["{root}/source", "{root}/target", "--metrics", "psnr"], ["--metrics", "psnr"]),
    "gap bad resize": (GAP + ["{root}/source", "{root}/target", "--resize", "zoom"], ["--resize", "zoom"]),
    "gap negative permutations": (GAP + ["{root}/source", "{root}/target", "--permutations", "-1"],
                                  ["--permutations"]),
    "gap json exists": (GAP + ["{root}/source", "{root}/target", "--json", "{root}/existing.json"],
                        ["existing.json", "--overwrite"]),
    "gap plot exists": (GAP + ["{root}/source", "{root}/target", "--plot", "{root}/existing.png"],
                        ["existing.png", "--overwrite"]),
    "gap plot exists, named without suffix": (GAP + ["{root}/source", "{root}/target", "--plot", "{root}/existing"],
                                              ["existing.png", "--overwrite"]),
    "gap plot not a png": (GAP + ["{root}/source", "{root}/target", "--plot", "{fresh}.svg"], [".svg", "PNG"]),
    "gap json is a folder": (GAP + ["{root}/source", "{root}/target", "--json", "{root}/empty", "--overwrite"],
                             ["empty", "is a folder"]),
    "gap export without classifier": (GAP + ["{root}/source", "{root}/target", "--export-label-shift",
                                             "{fresh}.json"], ["--export-label-shift", "--classifier"]),
    "gap classifier missing": (GAP + ["{root}/source", "{root}/target", "--classifier", "{root}/nothing.keras"],
                               ["nothing.keras", "does not exist"]),
    "gap classifier not a model": (GAP + ["{root}/source", "{root}/target", "--classifier",
                                          "{root}/not_a_model.keras"], ["not_a_model.keras"]),
    "gap classifier of other classes": (GAP + ["{root}/source", "{root}/target", "--classifier",
                                               "{root}/backbone.keras"], ["backbone.keras", "2 classes"]),
    "compare no run": (["compare", "{root}/empty"], ["empty", "no classifier.keras"]),
    "compare broken summary": (["compare", "{root}/fake_run"], ["fake_run", "summary.json", "not valid JSON"]),
    "compare no model inside": (["compare", "{root}/model_less_run", "--source", "{root}/source", "--target",
                                 "{root}/target", "--image-size", str(SIZE)], ["model_less_run"]),
    "compare json exists": (["compare", "{root}/model_less_run", "--source", "{root}/source", "--target", "{root}/target",
                             "--image-size", str(SIZE), "--json", "{root}/existing.json"],
                            ["existing.json", "--overwrite"]),
    "adapt missing classifier": (["adapt-at-test-time", "{root}/nothing.keras", "{root}/target", "--out", "{fresh}"],
                                 ["nothing.keras", "does not exist"]),
    "adapt not a model": (["adapt-at-test-time", "{root}/not_a_model.keras", "{root}/target", "--out", "{fresh}"],
                          ["not_a_model.keras"]),
    "adapt corrupt target": (["adapt-at-test-time", "{root}/backbone.keras", "{root}/corrupt", "--out", "{fresh}"],
                             ["corrupt", "none readable"]),
    "adapt batch size 0": (["adapt-at-test-time", "{root}/backbone.keras", "{root}/target", "--out", "{fresh}",
                            "--batch-size", "0"], ["--batch-size"]),
    "adapt unknown method": (["adapt-at-test-time", "{root}/backbone.keras", "{root}/target", "--out", "{fresh}",
                              "--method", "magic"], ["--method", "magic"]),
    "adapt out exists": (["adapt-at-test-time", "{root}/backbone.keras", "{root}/target", "--out",
                          "{root}/existing_run"], ["existing_run", "--overwrite"]),
    "unknown command": (["train", "{root}/source"], ["train"]),
}


def call(argv):
    """``(exit code, stdout, stderr)`` of ``main(argv)``: a returned code or a SystemExit's."""
    try:
        return cli_main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_exits_2_with_one_clear_line_and_touches_nothing(case, root, tmp_path, capsys):
    arguments, words = CASES[case]
    argv = [a.format(root=root, fresh=tmp_path / "out") for a in arguments]
    before = snapshot(root)
    code = call(argv)
    output = capsys.readouterr()
    assert code == 2, (case, code, output.err[-1500:])
    assert "Traceback" not in output.err + output.out, case
    lines = [line for line in output.err.splitlines() if line.strip()]
    # argparse prints its usage line first; our own errors print exactly one line.
    errors = [line for line in lines if not line.startswith(("usage:", " "))]
    assert len(errors) == 1 and "error:" in errors[0], (case, output.err)
    assert all(word in errors[0] for word in words), (case, words, errors[0])
    assert snapshot(root) == before, case  # nothing the user owns was changed
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), case


def test_a_mix_of_grey_rgba_and_16_bit_pngs_is_read_not_refused(root, tmp_path, capsys):
    assert call(GAP + [str(root / "mixed"), str(root / "target"), "--json", str(tmp_path / "gap.json")]) == 0
    table = json.loads((tmp_path / "gap.json").read_text())
    assert table["num_source"] == 4 and table["skipped"] == {"source": 0, "target": 0}
    assert "shift" in capsys.readouterr().out


def test_a_class_that_breaks_only_while_streaming_is_one_line_not_a_graph_error(root, tmp_path, capsys):
    # PNGs whose pixel data is damaged but whose header and end are intact pass the up-front check and fail
    # only when decoded inside the tf.data pipeline, during training.
    rng = np.random.default_rng(1)
    for name in ("class_a", "class_b"):
        for index in range(3):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3)).astype("uint8")).save(buffer, "PNG")
            data = bytearray(buffer.getvalue())
            if name == "class_b":
                middle = len(data) // 2
                data[middle - 10 : middle + 10] = bytes(20)
            (tmp_path / "source" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "source" / name / f"{index}.png").write_bytes(bytes(data))
    code = call(RUN[:-1] + [str(root / "backbone.keras"), "--source", str(tmp_path / "source"), "--target",
                            str(root / "target"), "--out", str(tmp_path / "out")])
    output = capsys.readouterr()
    assert code == 2 and "Traceback" not in output.err, output.err[-1500:]
    (line,) = [line for line in output.err.splitlines() if line.strip()]
    assert line.startswith("domadapt run: error: while reading the images:") and "class 'class_b'" in line
    assert not (tmp_path / "out" / "classifier.keras").exists()


def test_gap_and_run_on_a_folder_with_every_pathology_use_the_right_images_and_list_the_rest(root, tmp_path, capsys):
    from pathological_folder import write_pathological_folder

    photos = write_pathological_folder(tmp_path)
    before = snapshot(tmp_path)
    assert call(GAP + [str(photos.root), str(root / "target"), "--json", str(tmp_path / "gap.json")]) == 0
    table = json.loads((tmp_path / "gap.json").read_text())
    assert table["mmd_test"]["num_source"] == len(photos.used) == 16
    assert table["skipped"] == {"source": len(photos.skipped), "target": 0}
    assert f"Skipped {len(photos.skipped)} unreadable files in" in capsys.readouterr().out
    out = tmp_path / "run"
    assert call(RUN[:-1] + [str(root / "backbone.keras"), "--source", str(photos.root), "--target", str(root / "target"),
                            "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == photos.class_names
    assert summary["data"]["num_images"]["source"] == 16 and summary["skipped"]["source"] == len(photos.skipped)
    listed = sorted(line.split("\t")[0] for line in (out / "skipped.txt").read_text().splitlines())
    assert listed == sorted(str(photos.root / path) for path in photos.skipped)
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before  # the photos are untouched
