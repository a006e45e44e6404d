import gzip
import struct

import numpy as np
import pytest

from domadapt.datasets import DEBIAN_FASHION_MNIST, load_fashion_mnist, read_idx


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trips_a_written_file(tmp_path, compressed):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    payload = b"\x00\x00\x08\x03" + struct.pack(">3I", *images.shape) + images.tobytes()
    path = tmp_path / ("images.idx.gz" if compressed else "images.idx")
    (gzip.open if compressed else open)(path, "wb").write(payload)
    np.testing.assert_array_equal(read_idx(path), images)


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)
    # Sizes whose product wraps to 0 in 64 bits (2**31 * 2**31 * 4) and no data: numpy's raw reshape error before.
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4))
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1))  # 0 bytes, too big to hold
    with pytest.raises(ValueError, match="header says shape"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x46" + struct.pack(">70I", *[1] * 70) + b"\x01")  # 70 dimensions of 1
    with pytest.raises(ValueError, match="declares 70 dimensions"):
        read_idx(path)


def test_load_fashion_mnist_from_a_user_folder(tmp_path):
    def write(name, array):
        header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        (tmp_path / name).write_bytes(header + array.tobytes())

    write("train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write("train-labels-idx1-ubyte", np.array([1, 2, 3], np.uint8))
    write("t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write("t10k-labels-idx1-ubyte", np.array([4, 5], np.uint8))
    (train_x, train_y), (test_x, test_y) = load_fashion_mnist(tmp_path)
    assert train_x.shape == (3, 28, 28) and train_y.tolist() == [1, 2, 3] and test_y.tolist() == [4, 5]
    # images and labels swapped, or a label Fashion-MNIST does not have: returned as they came before
    write("train-images-idx3-ubyte", np.array([1, 2, 3], np.uint8))
    write("train-labels-idx1-ubyte", np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte holds uint8 of shape \\(3,\\)"):
        load_fashion_mnist(tmp_path)
    write("train-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8))
    write("train-labels-idx1-ubyte", np.array([1, 12, 3], np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte .* values up to 12"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        (tmp_path / "t10k-images-idx3-ubyte").unlink()
        load_fashion_mnist(tmp_path)


def test_a_missing_fashion_mnist_folder_is_an_error_not_another_copy(tmp_path):
    with pytest.raises(FileNotFoundError, match="`directory`.*no other copy"):
        load_fashion_mnist(tmp_path / "missing")


def test_read_idx_goes_by_content_and_names_a_truncated_gzip(tmp_path):
    images = np.arange(12, dtype=np.uint8).reshape(3, 4)
    payload = b"\x00\x00\x08\x02" + struct.pack(">2I", *images.shape) + images.tobytes()
    (tmp_path / "plain.gz").write_bytes(payload)  # named .gz, not compressed
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), images)
    (tmp_path / "cut.gz").write_bytes(gzip.compress(payload)[:-12])
    with pytest.raises(ValueError, match="cut.gz.*truncated"):
        read_idx(tmp_path / "cut.gz")
    corrupt = bytearray(gzip.compress(payload))
    corrupt[15] ^= 0xFF
    corrupt[16] ^= 0xFF
    (tmp_path / "corrupt.gz").write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="corrupt.gz.*corrupt"):  # a raw zlib.error before
        read_idx(tmp_path / "corrupt.gz")
    (tmp_path / "header.idx").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="header is cut off"):
        read_idx(tmp_path / "header.idx")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_has_the_standard_shapes():
    (train_x, train_y), (test_x, test_y) = load_fashion_mnist()
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert sorted(set(train_y.tolist())) == list(range(10))


def test_sunny_rainy_pair_is_reproducible_and_shifts_only_the_target():
    from domadapt.datasets import load_sunny_rainy

    inverted = lambda images, seed: 255 - images  # noqa: E731
    name, data = load_sunny_rainy(per_domain=50, test_size=20, shift=inverted)
    _, again = load_sunny_rainy(per_domain=50, test_size=20, shift=inverted)
    assert all(np.array_equal(data[k], again[k]) for k in data)
    count = len(data["source_x"])
    assert data["source_x"].shape[1:] == data["target_x"].shape[1:] and data["source_x"].shape[-1] == 3
    assert len(data["target_x"]) == count and data["source_y"].dtype == np.int64
    # The test splits hold the same underlying images: the target's is the shifted source's.
    np.testing.assert_array_equal(data["target_test_x"], 255 - data["source_test_x"])
    # per_domain=0 was numpy's "need at least one array to stack", test_size=-1 gave 9,999 test images, and a
    # per_domain past half of the training images gave a target with 10 images, without a word.
    for arguments, pattern in (({"per_domain": 0}, "`per_domain` must be a positive integer"),
                               ({"test_size": -1}, "`test_size` must be a positive integer"),
                               ({"seed": -1}, "`seed` must be None or a non-negative integer"),
                               ({"shift": "rain"}, "`shift` must be a function")):
        with pytest.raises((ValueError, TypeError), match=pattern):
            load_sunny_rainy(**{"per_domain": 50, "test_size": 20, **arguments})
    if name == "Fashion-MNIST":
        with pytest.raises(ValueError, match=r"per_domain at most 30000"):
            load_sunny_rainy(per_domain=59990, test_size=20)


def test_render_rain_veils_and_darkens_bright_images():
    from domadapt.datasets import render_rain

    bright = np.full((4, 28, 28, 3), 250, np.uint8)
    rainy = render_rain(bright, seed=0)
    assert rainy.shape == bright.shape and rainy.dtype == np.uint8
    # Veil 0.55 x + 70 = 207 for x = 250; faint streaks stay close to it.
    assert 170 < rainy.mean() < 215
    np.testing.assert_array_equal(rainy, render_rain(bright, seed=0))


def test_demo_refuses_to_replace_files_it_did_not_write_and_a_missing_data_folder(tmp_path, capsys):
    from domadapt.demo import main as demo_main

    (tmp_path / "demo.md").write_text("my notes")
    with pytest.raises(SystemExit):
        demo_main(["--out", str(tmp_path), "--epochs", "1"])
    assert "demo.md, not written by this demo; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "demo.md").read_text() == "my notes"
    with pytest.raises(SystemExit):
        demo_main(["--out", str(tmp_path / "new"), "--fashion-mnist", str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_demo_after_tensorflow_ran_warns_that_its_numbers_may_vary_instead_of_failing(tmp_path, monkeypatch):
    # One inter-op thread (what makes the demo's numbers reproduce) cannot be set once TensorFlow has run:
    # main() called from a notebook died with TensorFlow's raw RuntimeError before doing anything.
    import tensorflow as tf

    import domadapt.demo as demo

    def already_initialised(count):
        raise RuntimeError("Inter op parallelism cannot be modified after initialization.")

    class Reached(Exception):
        pass

    def stop(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", already_initialised)
    monkeypatch.setattr(demo, "load_sunny_rainy", stop)
    with pytest.warns(RuntimeWarning, match="cannot run one op at a time"), pytest.raises(Reached):
        demo.main(["--out", str(tmp_path / "out")])


def test_a_fashion_mnist_folder_named_by_the_environment_is_used_or_refused_never_replaced(tmp_path, monkeypatch):
    # A missing or incomplete $DOMADAPT_FASHION_MNIST fell back to Debian's copy without a word.
    from domadapt.datasets import load_fashion_mnist
    from domadapt.folders import decode_image

    monkeypatch.setenv("DOMADAPT_FASHION_MNIST", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$DOMADAPT_FASHION_MNIST=.*missing is not a folder"):
        load_fashion_mnist()
    monkeypatch.setenv("DOMADAPT_FASHION_MNIST", str(tmp_path))  # a folder without the IDX files
    with pytest.raises(FileNotFoundError):
        load_fashion_mnist()
    with pytest.raises(TypeError, match="Argument `path` must be a path"):  # os.fspath's message before
        decode_image(123)


@pytest.mark.parametrize("name", sorted(__import__("domadapt.shifts", fromlist=["RENDERERS"]).RENDERERS))
def test_shift_renderers_are_deterministic_uint8_maps_that_depend_on_the_seed(name):
    from domadapt.shifts import RENDERERS

    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 3), dtype="uint8")
    original = images.copy()
    first, again, other = RENDERERS[name](images, seed=3), RENDERERS[name](images, seed=3), RENDERERS[name](images, seed=4)
    assert first.dtype == np.uint8 and first.shape == images.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(images, original)  # the caller's images are not touched


def test_the_held_back_renderers_do_what_their_docstrings_say():
    from domadapt.shifts import pixelated_sensor, snowfall, underwater

    white = np.full((8, 28, 28, 3), 255, "uint8")
    under = underwater(white, seed=0).astype("float64")
    assert (under[..., 0] < 0.45 * under[..., 2]).all()  # red absorbed first
    black = np.zeros((8, 28, 28, 3), "uint8")
    snowy = snowfall(black, seed=0).astype("float64")
    assert snowy.mean() > 0.2 * 255 and snowy[..., 2].mean() > snowy[..., 0].mean()  # lifted towards a cold white
    # A one-pixel checkerboard cannot survive an 8-11 px sensor: it averages to mid-grey (plus read noise).
    checkerboard = (np.indices((28, 28)).sum(axis=0) % 2 * 255).astype("uint8")[None, ..., None].repeat(8, 0).repeat(3, -1)
    blocks = pixelated_sensor(checkerboard, seed=0).astype("float64")
    assert abs(blocks.mean() - 127.5) < 10 and blocks.std() < 0.12 * 255


@pytest.mark.parametrize("name", sorted(__import__("domadapt.shifts", fromlist=["RENDERERS"]).RENDERERS))
def test_shift_renderers_refuse_images_they_would_render_wrongly(name):
    from domadapt.shifts import RENDERERS

    for bad in (np.zeros((2, 28, 28), "uint8"), np.zeros((2, 28, 28, 3), "float32"), [[0]]):
        with pytest.raises(ValueError, match=r"`images` .*uint8 .*\(N, H, W, 3\)"):
            RENDERERS[name](bad, seed=0)
    with pytest.raises(TypeError, match="`seed`"):
        RENDERERS[name](np.zeros((2, 28, 28, 3), "uint8"), seed=0.5)
