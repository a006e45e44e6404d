"""Image folders as people have them: both paths (in memory, streamed) on one pathological folder."""

import io
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import domadapt as da
from domadapt.folders import decode_image, image_folder, read_images, read_labeled_folder
from pathological_folder import write_pathological_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_pathological_folder(tmp_path_factory.mktemp("pathological"))


def relative(spec, paths):
    return sorted(str(os.path.relpath(p, spec.root)) for p in paths)


def signature(images):
    """Sorted per-image mean colours: the same images, in any order, give the same signature."""
    return sorted(tuple(np.round(image.reshape(-1, 3).mean(0), 3)) for image in np.asarray(images))


def test_streamed_folder_uses_the_right_files_and_lists_the_skipped_ones(photos):
    folder = image_folder(photos.root, image_size=(16, 16))
    assert folder.class_names == ["cat", "dog"]
    assert relative(photos, folder.files) == photos.used_paths() and folder.count == 16
    assert folder.labels.tolist() == [0] * 14 + [1] * 2
    reasons = {os.path.relpath(s.path, photos.root): s.reason for s in folder.skipped}
    assert sorted(reasons) == sorted(photos.skipped)
    for path, words in photos.skipped.items():
        assert words in reasons[path], (path, reasons[path])

    images, labels = [], []
    for image, label in folder.dataset:
        images.append(image.numpy())
        labels.append(int(label))
    assert len(images) == 16 and sorted(labels) == [0] * 14 + [1] * 2
    assert images[0].shape == (16, 16, 3) and images[0].dtype == np.uint8
    expected = [decode_image(photos.root / p, (16, 16)) for p in photos.used_paths()]
    assert signature(images) == signature(expected)
    assert len(folder.skipped) == len(photos.skipped)  # nothing newly failed while streaming


def test_in_memory_readers_use_the_same_files_and_pixels(photos):
    images, labels, names, skipped = read_labeled_folder(photos.root, (16, 16), return_skipped=True)
    assert images.shape == (16, 16, 16, 3) and labels.tolist() == [0] * 14 + [1] * 2 and names == ["cat", "dog"]
    assert sorted(os.path.relpath(s.path, photos.root) for s in skipped) == sorted(photos.skipped)
    expected = [decode_image(photos.root / p, (16, 16)) for p in photos.used_paths()]
    assert signature(images) == signature(expected)
    # Unlabeled: the whole tree, the same 16 images; skipped files are reported by a warning.
    with pytest.warns(UserWarning, match="skipped 4 files"):
        unlabeled = read_images(photos.root, (16, 16))
    assert signature(unlabeled) == signature(expected)
    # The old positional signature and return types still work.
    with pytest.warns(UserWarning):
        old = read_labeled_folder(photos.root, (16, 16), 1, 0, ["cat", "dog"])
    assert len(old) == 3 and old[0].shape == (2, 16, 16, 3) and old[1].tolist() == [0, 1]


def test_strict_lists_every_skipped_file(photos):
    with pytest.raises(ValueError, match=r"4 files cannot be used \(strict=True\)") as error:
        image_folder(photos.root, image_size=(16, 16), strict=True)
    for path in photos.skipped:
        assert os.path.basename(path) in str(error.value)
    with pytest.raises(ValueError, match="truncated.png: truncated image"):
        read_images(photos.root / "cat", (16, 16), strict=True)


def test_pixel_formats_become_the_same_rgb(photos):
    def pixel(name, y=8, x=8, size=(16, 16)):
        return decode_image(photos.root / "cat" / name, size)[y, x].tolist()

    assert pixel("grey16.png", 0, 0) == [255] * 3  # 65535 -> 255
    assert pixel("grey16.png", 0, 1) == [128] * 3 and pixel("grey16.png", 0, 2) == [4] * 3  # scaled, not clipped
    assert pixel("rgba.png", 8, 12) == [255, 255, 255]  # transparent -> white background
    assert pixel("rgba.png", 8, 2) == [0, 0, 255]
    assert pixel("rgba.png", 0, 15) == [255, 127, 127]  # half-transparent red on white
    assert pixel("palette transparent.png", 8, 2) == [0, 0, 255] and pixel("palette transparent.png", 8, 12) == [255] * 3
    assert pixel("grey L.png") == [100] * 3 and pixel("grey alpha LA.png") == [255] * 3
    # A 16-bit grey PNG with a tRNS value: its transparent pixels go on white too (they came out as the grey value).
    Image.fromarray(np.full((4, 6), 1000, np.uint16)).save(photos.root.parent / "grey16 transparent.png",
                                                          transparency=1000)
    assert decode_image(photos.root.parent / "grey16 transparent.png")[0, 0].tolist() == [255] * 3
    assert np.abs(np.array(pixel("cmyk.jpg")) - [0, 255, 255]).max() <= 3  # cyan
    assert pixel("animated.gif") == [255, 0, 0]  # first frame
    for name in ("red.webp", "red.bmp", "red.tif", "café au lait ü 猫.png"):
        assert pixel(name) == [255, 0, 0], name
    # EXIF orientation 6: the stored 20x10 image shows as 10 wide, 20 high; its red
    # top-left corner moves to the top-right.
    rotated = decode_image(photos.root / "cat" / "exif rotated.jpg")
    assert rotated.shape == (20, 10, 3)
    assert rotated[:3, -3:, 0].min() > 200 and rotated[:4, :4, 0].max() < 40 and rotated[-4:, -4:, 0].max() < 40


@pytest.mark.parametrize("resize, corner, centre", [("stretch", 255, 255), ("crop", 255, 255), ("pad", 0, 255)])
def test_resize_policies_on_a_wide_image(tmp_path, resize, corner, centre):
    wide = np.full((10, 40, 3), 255, np.uint8)
    wide[:, :10] = wide[:, 30:] = 50  # grey ends: stretch keeps them, crop cuts them
    Image.fromarray(wide).save(tmp_path / "wide.png")
    image = decode_image(tmp_path / "wide.png", (20, 20), resize)
    assert image.shape == (20, 20, 3)
    assert image[0, 10, 0] == (0 if resize == "pad" else 255)  # pad: black band above
    assert image[10, 10, 0] == centre
    assert image[10, 0, 0] == (50 if resize in ("stretch", "pad") else 255)


def test_a_file_that_breaks_after_the_check_is_replaced_and_listed(tmp_path):
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 100, 0, 0)).save(tmp_path / f"{index}.png")
    folder = image_folder(tmp_path, labeled=False, image_size=(8, 8))
    assert folder.count == 3 and folder.skipped == []
    (tmp_path / "1.png").write_bytes((tmp_path / "1.png").read_bytes()[:40])  # broken after the check
    reds = sorted(int(image[0, 0, 0]) for image in folder.dataset)
    assert len(reds) == 3 and 100 not in reds  # the pass keeps its length; the broken file is not used
    assert [(os.path.basename(s.path), "while streaming" in s.reason) for s in folder.skipped] == [("1.png", True)]


def test_errors_name_the_folder_and_the_argument(tmp_path):
    (tmp_path / "empty class").mkdir()
    (tmp_path / "full").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "full" / "a.png")
    (tmp_path / "full" / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match="empty class holds no readable image"):
        image_folder(tmp_path, image_size=(8, 8))
    shutil.rmtree(tmp_path / "empty class")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"broken holds no readable image \(1 image files, none readable"):
        read_labeled_folder(tmp_path, (8, 8))
    with pytest.raises(ValueError, match="`resize` must be one of"):
        image_folder(tmp_path, resize="squash")
    with pytest.raises(ValueError, match="`image_size` must be"):
        image_folder(tmp_path, image_size=(0, 8))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        image_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"class folders \['broken', 'full'\] are not among"):
        image_folder(tmp_path, image_size=(8, 8), class_names=["cat"])
    with pytest.raises(TypeError, match="`class_names` must be a list"):
        image_folder(tmp_path, image_size=(8, 8), class_names="full")


def test_max_images_draws_a_seeded_subset_of_readable_files(tmp_path):
    for index in range(10):
        Image.new("RGB", (8, 8), (index * 20, 0, 0)).save(tmp_path / f"{index}.png")
    for index in range(5):
        (tmp_path / f"bad{index}.png").write_bytes(b"")
    folder = image_folder(tmp_path, labeled=False, image_size=(8, 8), max_images=8, seed=3)
    assert folder.count == 8 and all(f.stat().st_size > 0 for f in folder.files)
    assert image_folder(tmp_path, labeled=False, image_size=(8, 8), max_images=8, seed=3).files == folder.files
    images, skipped = read_images(tmp_path, (8, 8), max_images=8, seed=3, return_skipped=True)
    # The same subset in memory, in file order: image i is file i's colour.
    assert images[:, 0, 0, 0].tolist() == [int(f.stem) * 20 for f in folder.files]
    assert images[:, 0, 0, 0].tolist() != [0, 20, 40, 60, 80, 100, 120, 140]  # a random subset, not the first 8


def test_streamed_folders_train_and_measure(tmp_path):
    rng = np.random.default_rng(0)
    for domain, shift in (("source", 0), ("target", 60)):
        for name in ("a", "b"):
            (tmp_path / domain / name).mkdir(parents=True)
            for index in range(6):
                pixels = rng.integers(0, 100, (12, 12, 3)) + shift + (100 if name == "b" else 0)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(tmp_path / domain / name / f"{index}.png")
    source = image_folder(tmp_path / "source", image_size=(12, 12))
    target = image_folder(tmp_path / "target", labeled=False, image_size=(12, 12))
    backbone = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Conv2D(4, 3)])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=da.MMD(0.1))
    adapter.compile(optimizer="adam")
    history = adapter.fit(source=source.dataset, target=target.dataset, epochs=1, batch_size=4, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    source_features, target_features = da.gap.features(backbone, source.dataset, target.dataset, verbose=0)
    assert source_features.shape == (12, 4) and target_features.shape == (12, 4)
    # keras' own folder datasets keep working alongside.
    keras_source = keras.utils.image_dataset_from_directory(tmp_path / "source", image_size=(12, 12), batch_size=4, verbose=False)
    source_features, _ = da.gap.features(backbone, keras_source, target.dataset, verbose=0)
    assert source_features.shape == (12, 4)


def _valid(kind):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


VALID = {"png": _valid("PNG"), "jpg": _valid("JPEG")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(["png", "jpg"]),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10_000)),
)
def test_fuzzed_files_are_used_or_listed_never_a_traceback(tmp_path_factory, kind, flips, cut):
    data = bytearray(VALID[kind])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    folder_path = tmp_path_factory.mktemp("fuzz")
    (folder_path / f"fuzzed.{kind}").write_bytes(bytes(data))
    (folder_path / "anchor.png").write_bytes(VALID["png"])
    every = {"fuzzed." + kind, "anchor.png"}

    images, skipped = read_images(folder_path, (8, 8), return_skipped=True)
    assert len(images) + len(skipped) == 2 and images.shape[1:] == (8, 8, 3)
    folder = image_folder(folder_path, labeled=False, image_size=(8, 8))
    streamed = [image.numpy() for image in folder.dataset]
    assert len(streamed) == folder.count
    used = {f.name for f in folder.files} - {os.path.basename(s.path) for s in folder.skipped}
    listed = {os.path.basename(s.path) for s in folder.skipped}
    assert used | listed == every and "anchor.png" in used


def test_class_names_match_folders_in_either_unicode_form_and_jfif_counts_as_jpeg(tmp_path):
    """macOS names "chien_é" decomposed (NFD); class names typed or read from JSON are composed (NFC)."""
    import unicodedata

    for name, colour in (("cat", (0, 0, 0)), (unicodedata.normalize("NFD", "chien_é"), (255, 255, 255))):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8), colour).save(tmp_path / name / "a.png")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "cat" / "b.jfif", format="JPEG")
    images, labels, names = read_labeled_folder(tmp_path, (8, 8), class_names=["cat", unicodedata.normalize("NFC", "chien_é")])
    assert names == ["cat", "chien_é"] and sorted(labels.tolist()) == [0, 0, 1]
    assert images[labels == 1].mean() > 250  # the white image of the decomposed folder


def test_class_names_are_composed_unicode_so_a_macos_folder_gets_the_same_names_and_labels(tmp_path):
    # Class names were the on-disk names: a source written on macOS ("e\u0301te\u0301", decomposed) and a target
    # written elsewhere ("\u00e9t\u00e9") read as two names, and sorted on opposite sides of "fleur": other labels.
    # An expected class whose decomposed folder had no image was also taken as absent, silently.
    import unicodedata

    for form in ("NFD", "NFC"):
        for name, colour in (("été", (255, 255, 255)), ("fleur", (0, 0, 0))):
            (tmp_path / form / unicodedata.normalize(form, name)).mkdir(parents=True)
            Image.new("RGB", (8, 8), colour).save(tmp_path / form / unicodedata.normalize(form, name) / "a.png")
    if len(set(os.listdir(tmp_path / "NFD")) | set(os.listdir(tmp_path / "NFC"))) < 3:
        pytest.skip("this file system stores one Unicode form of a name")
    read = {form: read_labeled_folder(tmp_path / form, (8, 8)) for form in ("NFD", "NFC")}
    for images, labels, names in read.values():
        assert names == ["fleur", unicodedata.normalize("NFC", "été")]
        assert images[labels == 0].mean() == 0 and images[labels == 1].mean() == 255
    assert image_folder(tmp_path / "NFD", image_size=(8, 8)).class_names == read["NFC"][2]
    os.remove(tmp_path / "NFD" / unicodedata.normalize("NFD", "été") / "a.png")
    with pytest.raises(ValueError, match="holds no readable image"):
        read_labeled_folder(tmp_path / "NFD", (8, 8), class_names=read["NFC"][2])
    # One class named in both forms is named twice (it was reported as one image reached through a symbolic link).
    with pytest.raises(ValueError, match="names a class twice"):
        read_labeled_folder(tmp_path / "NFC", (8, 8), class_names=["fleur", unicodedata.normalize("NFC", "été"),
                                                                   unicodedata.normalize("NFD", "été")])


def test_an_npz_with_several_arrays_and_no_images_key_is_refused(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_test=np.zeros((2, 8, 8)), x_train=np.zeros((5, 8, 8)))
    with pytest.raises(ValueError, match=r"several arrays \(x_test, x_train\) and none named 'images' or 'x'"):
        read_images(tmp_path / "mnist.npz")
    with open(tmp_path / "IMAGES.NPY", "wb") as file:  # np.save(path) would append ".npy"
        np.save(file, np.zeros((3, 8, 8, 3), "uint8"))
    assert read_images(tmp_path / "IMAGES.NPY").shape == (3, 8, 8, 3)


def test_a_folder_linked_into_another_class_keeps_its_own_label_or_is_refused(tmp_path):
    # One record of visited folders was shared by all classes: the images of dog/extra, linked from cat/ (read
    # first), were labeled cat only; a link from cat/ to the whole dog/ folder left dog "without images".
    for folder in ("cat", "dog/extra"):
        (tmp_path / "root" / folder).mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "root" / "cat" / "1.png")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "root" / "dog" / "1.png")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "root" / "dog" / "extra" / "2.png")
    (tmp_path / "other").mkdir()
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "other" / "3.png")
    os.symlink(tmp_path / "other", tmp_path / "root" / "cat" / "more")  # a link out of the tree: cat's images
    images, labels, names = read_labeled_folder(tmp_path / "root", (8, 8))
    assert names == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    assert images[labels == 1].mean() == 255 and images[labels == 0].mean() == 0
    os.symlink(tmp_path / "root" / "dog" / "extra", tmp_path / "root" / "cat" / "shared")
    with pytest.raises(ValueError, match=r"2.png is reached from two class folders.*class 'cat'.*class 'dog'"):
        read_labeled_folder(tmp_path / "root", (8, 8))


def test_a_link_to_an_image_of_the_same_folder_is_not_read_twice(tmp_path):
    # a.png counted twice (pixel values [10, 10, 20]): a duplicate sample in the gap statistics and in training.
    (tmp_path / "root" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (10, 10, 10)).save(tmp_path / "root" / "a.png")
    Image.new("RGB", (8, 8), (20, 20, 20)).save(tmp_path / "root" / "sub" / "b.png")
    os.symlink(tmp_path / "root" / "a.png", tmp_path / "root" / "a_link.png")
    Image.new("RGB", (8, 8), (30, 30, 30)).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", tmp_path / "root" / "sub" / "c.png")  # out of the tree: read
    images, skipped = read_images(tmp_path / "root", (8, 8), return_skipped=True)
    assert sorted(images[:, 0, 0, 0].tolist()) == [10, 20, 30]
    assert [os.path.basename(item.path) for item in skipped] == ["a_link.png"] and "read under its own name" in skipped[0].reason


def test_two_class_folders_with_one_name_in_two_unicode_forms_are_refused(tmp_path):
    import unicodedata

    for name in {unicodedata.normalize(form, "café") for form in ("NFC", "NFD")}:
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "a.png")
    if len(os.listdir(tmp_path)) < 2:
        pytest.skip("this file system stores one Unicode form of a name")
    with pytest.raises(ValueError, match="same name in two Unicode forms"):
        read_labeled_folder(tmp_path, (8, 8))


def test_an_array_file_without_images_is_refused_like_a_folder_without_images(tmp_path):
    # An empty .npy or .npz array was returned as (0, 8, 8, 1) without a word; a folder without images is an error.
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8, 1), "uint8"))
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8), "float32"))
    np.save(tmp_path / "flat.npy", np.zeros((5, 0, 8), "uint8"))
    for name in ("empty.npy", "empty.npz"):
        with pytest.raises(ValueError, match=rf"{name} holds no images: .* received an array of shape \(0, 8, 8"):
            read_images(tmp_path / name)
    with pytest.raises(ValueError, match=r"flat.npy holds images without pixels: .* shape \(5, 0, 8\)"):
        read_images(tmp_path / "flat.npy")


def test_bad_array_files_and_seeds_are_clear_errors_naming_the_path_or_argument(tmp_path):
    # A flat (N, 784) array or a labels-only .npz passed silently, an empty file was an EOFError traceback,
    # a cut .npz a BadZipFile, a bad seed numpy's message.
    np.save(tmp_path / "flat.npy", np.zeros((5, 784), "uint8"))
    np.savez(tmp_path / "labels.npz", y=np.zeros(5, "int64"))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]] * 2))
    (tmp_path / "empty.npy").write_bytes(b"")
    np.savez(tmp_path / "cut.npz", images=np.zeros((5, 8, 8, 3), "uint8"))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:100])
    np.savez(tmp_path / "none.npz")
    for name, pattern in (("flat.npy", r"shape \(N, H, W\) or \(N, H, W, C\); received an array of shape \(5, 784\)"),
                          ("labels.npz", r"received an array of shape \(5,\)"), ("text.npy", "dtype <U1"),
                          ("empty.npy", "cannot be read as a .npy array"), ("cut.npz", "cannot be read as a .npz array"),
                          ("none.npz", "an .npz archive with no arrays")):
        with pytest.raises(ValueError, match=pattern) as caught:
            read_images(tmp_path / name)
        assert str(tmp_path / name) in str(caught.value)
    np.save(tmp_path / "images.npy", np.zeros((5, 8, 8, 3), "uint8"))
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cls" / "a.png")
    for seed in (-1, "a", 1.5):
        for call in (lambda: read_images(tmp_path / "images.npy", max_images=2, seed=seed),
                     lambda: image_folder(tmp_path, image_size=(8, 8), seed=seed)):
            with pytest.raises(ValueError, match="Argument `seed` must be None or a non-negative integer"):
                call()
    images, labels, names = read_labeled_folder(tmp_path, (8, 8), class_names=(name for name in ["cls"]))
    assert names == ["cls"] and labels.tolist() == [0]  # a generator of class names is read once


def test_netpbm_targa_and_icon_files_are_read(tmp_path):
    # Pillow decodes them, but they were neither read nor listed as skipped: silently lost.
    for index, (suffix, mode) in enumerate(((".pgm", "L"), (".ppm", "RGB"), (".pbm", "1"), (".tga", "RGB"),
                                            (".ico", "RGBA"))):
        (tmp_path / f"class_{index}").mkdir()
        Image.new(mode, (16, 16), 255 if mode in ("L", "1") else (255,) * len(mode)).save(tmp_path / f"class_{index}" / f"a{suffix}")
    images, labels, names = read_labeled_folder(tmp_path, (8, 8), strict=True)
    assert labels.tolist() == [0, 1, 2, 3, 4] and images.shape == (5, 8, 8, 3) and images.min() == 255
