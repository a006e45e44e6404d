"""Domain-mimicking augmentation: presets, target-referenced style, pipeline order, auto choice."""

import keras
import numpy as np
import pytest

from conftest import conv_backbone

import domadapt as da
from domadapt._training import with_input_transforms
from domadapt.strategies.mimic_augment import PRESETS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_changes_images_keeps_format_and_is_reproducible(preset, photos):
    strategy = da.MimicAugment(preset, severity=0.8, seed=0)
    augmented = strategy.augment(photos)
    assert augmented.shape == photos.shape and augmented.dtype == np.uint8
    assert np.mean(augmented != photos) > 0.05, "the preset left the images unchanged"
    np.testing.assert_array_equal(augmented, da.MimicAugment(preset, severity=0.8, seed=0).augment(photos))
    assert not np.array_equal(augmented, da.MimicAugment(preset, severity=0.8, seed=1).augment(photos))
    floats = da.MimicAugment(preset, severity=0.8, seed=0).augment(photos.astype("float32") / 255)
    assert floats.dtype == np.float32 and floats.min() >= 0.0 and floats.max() <= 1.0
    gray = da.MimicAugment(preset, severity=0.8, seed=0).augment(photos[..., :1])
    assert gray.shape == photos[..., :1].shape


def test_severity_strengthens_the_effect(photos):
    def change(severity):
        return np.abs(da.MimicAugment("night", severity=severity, seed=0).augment(photos).astype(int) - photos).mean()

    assert change(0.1) < change(0.9)


def channel_histogram_distance(a, b, bins=16):
    distance = 0.0
    for channel in range(a.shape[-1]):
        ha = np.histogram(a[..., channel], bins=bins, range=(0, 255), density=True)[0]
        hb = np.histogram(b[..., channel], bins=bins, range=(0, 255), density=True)[0]
        distance += np.abs(ha - hb).sum()
    return distance


@pytest.mark.parametrize("method", ["fda", "histogram", "pda"])
def test_from_target_moves_source_pixel_statistics_toward_the_target(method, photos):
    # Target: the same kind of scenes, dark and blue-tinted.
    target = (photos[::-1].astype("float32") * [0.35, 0.45, 0.9]).astype("uint8")
    strategy = da.MimicAugment.from_target(target, method=method, severity=1.0, seed=0)
    styled = strategy.augment(photos)
    assert channel_histogram_distance(styled, target) < 0.8 * channel_histogram_distance(photos, target)


def test_from_target_samples_references_from_the_target_stream_at_fit(photos):
    keras.utils.set_random_seed(0)
    strategy = da.MimicAugment.from_target(method="histogram", num_references=4, seed=0)
    backbone = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Conv2D(4, 3)])
    adapter = da.DomainAdapter(backbone, num_classes=2, strategies=[strategy])
    adapter.compile(optimizer="adam")
    target = (photos * 0.3).astype("uint8")
    adapter.fit(source=(photos, np.arange(8) % 2), target=target, epochs=1, batch_size=4, verbose=0)
    assert len(strategy.references) == 4
    assert all(any(np.array_equal(r, t) for t in target) for r in strategy.references)


def test_pipeline_keeps_labels_and_order_and_changes_only_images(photos):
    labels = np.arange(8) % 3
    backbone = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Conv2D(4, 3)])

    def first_batches(strategies):
        adapter = da.DomainAdapter(backbone, num_classes=3, strategies=strategies)
        paired = da.data.pair((photos, labels), image_shape=adapter.image_shape, num_classes=3, batch_size=4,
                              shuffle=False)
        dataset = with_input_transforms(paired.dataset, adapter.strategies)
        return [(b["source"][0].numpy(), b["source"][1].numpy()) for b in dataset.take(4)]

    plain = first_batches([])
    augmented = first_batches([da.MimicAugment("fog", seed=0)])
    for (plain_images, plain_labels), (aug_images, aug_labels) in zip(plain, augmented):
        np.testing.assert_array_equal(plain_labels, aug_labels)
        assert aug_images.shape == plain_images.shape and aug_images.dtype == plain_images.dtype
        assert not np.array_equal(plain_images, aug_images)
    # Epochs 1 and 2 (steps 0 and 2) feed the same pixels without shuffling: fresh draws each epoch...
    assert np.mean(augmented[0][0] != augmented[2][0]) > 0.05
    # ... and the same draws on a rerun with the same seed.
    again = first_batches([da.MimicAugment("fog", seed=0)])
    for (images, _), (rerun, _) in zip(augmented, again):
        np.testing.assert_array_equal(images, rerun)


def test_auto_picks_the_preset_that_produced_the_target(photos):
    target = da.MimicAugment("night", severity=0.8, seed=5).augment(np.concatenate([photos, photos[::-1]]))
    best = da.MimicAugment.auto(photos, target, candidates=["fog", "night", "snow"], severity=0.8, verbose=False)
    assert best.transform == "night"
    assert best.ranking[0][0] == "night" and best.ranking[0][2] > 0


def test_custom_albumentations_transform_and_config_round_trip(photos):
    import albumentations as A

    strategy = da.MimicAugment(A.Compose([A.ToGray(p=1.0)]), seed=3)
    gray = strategy.augment(photos)
    assert np.allclose(gray[..., 0], gray[..., 1], atol=1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(strategy))
    np.testing.assert_array_equal(restored.augment(photos), gray)
    preset = da.MimicAugment("rain", severity=0.3, seed=2)
    assert type(preset).from_config(preset.get_config()).get_config() == preset.get_config()


def test_preview_writes_a_grid_and_keeps_existing_files(tmp_path, photos):
    path = da.augment.preview(photos, ["rain", "fog"], path=tmp_path / "preview.png", num_images=3)
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError):
        da.augment.preview(photos, "rain", path=path)


def test_bad_augment_arguments_are_clear_errors(photos):
    with pytest.raises(ValueError, match="unknown preset 'hail'"):
        da.MimicAugment("hail")
    with pytest.raises(ValueError, match=r"`severity` must be a number in \[0, 1\]"):
        da.MimicAugment("rain", severity=2)
    with pytest.raises(ValueError, match="`method` must be one of"):
        da.MimicAugment.from_target(photos, method="cyclegan")
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        da.MimicAugment("rain").augment(photos[0])
    with pytest.raises(ValueError, match="No reference images"):
        da.MimicAugment.from_target(method="fda").augment(photos)


def test_histogram_style_transfer_lifts_target_accuracy_on_digits(digits):
    """Source: digits; target: the same digits brighter with lower contrast, unlabeled.
    Matching source histograms to target references during training lifts target accuracy."""

    def score(strategies):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(conv_backbone(), num_classes=10, strategies=strategies)
        adapter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
        adapter.fit(source=(digits["source_x"], digits["source_y"]), target=digits["target_x"], epochs=15,
                    batch_size=64, verbose=0, seed=0)
        return adapter.evaluate(digits["target_x"], digits["target_y"], verbose=0)[1]

    plain = score([])
    styled = score([da.MimicAugment.from_target(method="histogram", seed=0)])
    assert styled > plain + 0.15, (plain, styled)


# ----------------------------------------------------------------------------- engine="tf"
from domadapt.strategies._tf_presets import TF_PRESETS  # noqa: E402


@pytest.mark.parametrize("preset", sorted(TF_PRESETS))
def test_tf_engine_keeps_format_is_reproducible_and_matches_albumentations_statistics(preset, photos):
    strategy = da.MimicAugment(preset, severity=0.8, seed=0, engine="tf")
    augmented = strategy.augment(photos)
    assert augmented.shape == photos.shape and augmented.dtype == np.uint8
    assert np.mean(augmented != photos) > 0.05
    np.testing.assert_array_equal(augmented, da.MimicAugment(preset, severity=0.8, seed=0, engine="tf").augment(photos))
    assert not np.array_equal(augmented, da.MimicAugment(preset, severity=0.8, seed=1, engine="tf").augment(photos))
    floats = strategy.augment(photos.astype("float32") / 255)
    assert floats.dtype == np.float32 and floats.min() >= 0.0 and floats.max() <= 1.0
    np.testing.assert_array_equal(da.MimicAugment(preset, p=0.0, seed=0, engine="tf").augment(photos), photos)
    # The same preset parameters: the two engines agree on brightness and contrast.
    reference = da.MimicAugment(preset, severity=0.8, seed=0).augment(np.concatenate([photos] * 4))
    ours = da.MimicAugment(preset, severity=0.8, seed=0, engine="tf").augment(np.concatenate([photos] * 4))
    assert abs(ours.mean() - reference.mean()) < 0.04 * 255, (ours.mean(), reference.mean())
    assert abs(ours.std() - reference.std()) < 0.04 * 255, (ours.std(), reference.std())


def test_tf_engine_runs_in_the_compiled_step_and_lifts_accuracy_on_a_night_shift(digits):
    """Source: digits; target: the same digits at night (albumentations engine), unlabeled.
    Night augmentation inside the XLA-compiled train step lifts target accuracy."""
    target_x = da.MimicAugment("night", severity=0.8, seed=1).augment(digits["target_x"])
    strategy = da.MimicAugment("night", severity=0.8, seed=0, engine="tf")
    # Declared capabilities: nothing runs in tf.data, the in-step hook does.
    assert strategy.augments_in_step and not strategy.transforms_source and not strategy.transforms_target
    assert da.MimicAugment("night").transforms_source and not da.MimicAugment("night").transforms_target

    def score(strategies):
        keras.utils.set_random_seed(0)
        adapter = da.DomainAdapter(conv_backbone(), num_classes=10, strategies=strategies)
        adapter.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"], jit_compile=True)
        adapter.fit(source=(digits["source_x"], digits["source_y"]), target=target_x, epochs=15, batch_size=64,
                    verbose=0, seed=0)
        return adapter.evaluate(target_x, digits["target_y"], verbose=0)[1]

    plain, augmented = score([]), score([strategy])
    assert augmented > plain + 0.12, (plain, augmented)


def test_tf_engine_config_round_trip_and_clear_errors():
    strategy = da.MimicAugment("overcast", severity=0.3, seed=4, engine="tf")
    clone = da.MimicAugment.from_config(strategy.get_config())
    assert (clone.engine, clone.transform, clone.severity, clone.seed) == ("tf", "overcast", 0.3, 4)
    import albumentations as A

    with pytest.raises(ValueError, match="not for custom albumentations transforms"):
        da.MimicAugment(A.ToGray(p=1.0), engine="tf")
    with pytest.raises(ValueError, match="Argument `engine`"):
        da.MimicAugment("night", engine="opencv")


# ---------------------------------------------------------------------- segmentation masks
def _masks(photos):
    """Class masks for the photos (the bright square is class 1, the rest 0) with an ignored (255) top band."""
    masks = (photos.min(axis=-1) > 230).astype("int32")
    masks[:, :5] = 255
    return masks


def _segmentation_adapter(strategies, size=48):
    backbone = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    return da.DomainAdapter(backbone, num_classes=2, task=da.tasks.Segmentation(ignore_index=255),
                            strategies=strategies)


def _first_source_batch(adapter, images, masks, batch_size=8):
    paired = da.tasks.pair(adapter.task, (images, masks), image_shape=adapter.image_shape,
                           output_shape=adapter.output_shape_per_image, batch_size=batch_size, shuffle=False)
    (images, masks), = [element["source"] for element in with_input_transforms(paired.dataset, adapter.strategies).take(1)]
    return images.numpy(), masks.numpy()


def test_a_horizontal_flip_moves_each_mask_exactly_as_its_image(photos):
    import albumentations as A

    masks = _masks(photos)
    assert 0 < (masks == 1).sum() and (masks == 255).sum() == 8 * 5 * 48
    flipped, moved = da.MimicAugment(A.HorizontalFlip(p=1.0), seed=0).augment(photos, masks=masks)
    np.testing.assert_array_equal(flipped, photos[:, :, ::-1])
    np.testing.assert_array_equal(moved, masks[:, :, ::-1])
    assert moved.dtype == masks.dtype
    # p=0.5 inside a Compose with rain: each image is flipped or not, and its mask follows it.
    strategy = da.MimicAugment(A.Compose([A.HorizontalFlip(p=0.5), A.RandomRain(p=1.0)]), seed=1)
    assert strategy.moves_pixels
    rainy, moved = strategy.augment(photos, masks=masks)
    was_flipped = [np.array_equal(m, mask[:, ::-1]) for m, mask in zip(moved, masks)]
    assert 0 < sum(was_flipped) < 8  # both cases occur
    for image, original, flip in zip(rainy, photos, was_flipped):
        unflipped = image[:, ::-1] if flip else image  # rain streaks aside, the flipped photo
        other = image if flip else image[:, ::-1]
        assert np.abs(unflipped.astype(int) - original).mean() < np.abs(other.astype(int) - original).mean() - 5
    # The same through the adapter's tf.data pipeline (masks are the source labels there).
    adapter = _segmentation_adapter([da.MimicAugment(A.HorizontalFlip(p=1.0), seed=0)])
    images, moved = _first_source_batch(adapter, photos, masks)
    np.testing.assert_array_equal(images, photos[:, :, ::-1])
    np.testing.assert_array_equal(moved, masks[:, :, ::-1])


@pytest.mark.parametrize("name", sorted(PRESETS) + ["fda", "histogram", "pda"])
def test_weather_presets_and_style_transfer_leave_masks_bit_identical(name, photos):
    masks = _masks(photos)

    def make():
        if name in ("fda", "histogram", "pda"):
            return da.MimicAugment.from_target(photos[::-1] // 3, method=name, severity=0.8, seed=0)
        return da.MimicAugment(name, severity=0.8, seed=0)

    assert not make().moves_pixels
    images, kept = make().augment(photos, masks=masks)
    np.testing.assert_array_equal(kept, masks)
    np.testing.assert_array_equal(images, make().augment(photos))  # the same draws as without masks
    assert np.mean(images != photos) > 0.05
    adapter = _segmentation_adapter([make()])
    images, kept = _first_source_batch(adapter, photos, masks)
    np.testing.assert_array_equal(kept, masks)
    assert np.mean(images != photos) > 0.05


def test_ignored_pixels_survive_a_rotation_and_created_pixels_become_ignored(photos):
    import albumentations as A

    masks = _masks(photos)
    rotate = A.Rotate(limit=(30, 30), p=1.0)  # fill_mask=0 (albumentations' default): the corners would be class 0
    _, moved = da.MimicAugment(rotate, seed=0).augment(photos, masks=masks)
    # The reference: the same fixed rotation told to fill the mask with 255.
    reference = np.stack([A.Rotate(limit=(30, 30), p=1.0, fill_mask=255)(image=p, mask=m)["mask"]
                          for p, m in zip(photos, masks)])
    np.testing.assert_array_equal(moved, reference)
    created = A.Rotate(limit=(30, 30), p=1.0)(image=photos[0], mask=np.ones((48, 48), np.uint8))["mask"] == 0
    assert 300 < created.sum() < 1500  # the four corners
    assert np.all(moved[:, created] == 255)
    # The rotated top band (ignored) stays ignored: ignored pixels exist beyond the created corners.
    assert np.all((moved == 255).sum(axis=(1, 2)) > created.sum() + 100)
    assert rotate.fill_mask == 0  # the user's transform is not modified
    _, kept_fill = da.MimicAugment(rotate, seed=0).augment(photos, masks=masks, ignore_index=None)
    assert np.all(kept_fill[:, created] == 0)  # no ignore index: the transform's own fill_mask


def test_mask_arguments_and_tasks_are_checked(photos):
    import albumentations as A

    flip = da.MimicAugment(A.HorizontalFlip(p=1.0))
    with pytest.raises(ValueError, match=r"Argument `masks`: expected one mask per image, shape \(8, 48, 48\)"):
        flip.augment(photos, masks=np.zeros((8, 40, 40), int))
    with pytest.raises(TypeError, match="Argument `masks`: expected integer class indices"):
        flip.augment(photos, masks=np.zeros((8, 48, 48), "float32"))
    with pytest.raises(ValueError, match="`ignore_index` must be a non-negative integer"):
        flip.augment(photos, masks=np.zeros((8, 48, 48), int), ignore_index=-1)
    backbone = keras.Sequential([keras.Input((48, 48, 3)), keras.layers.Conv2D(4, 3)])
    with pytest.raises(ValueError, match="HorizontalFlip moves pixels, but regression targets cannot be moved"):
        da.DomainAdapter(backbone, task="regression", strategies=[flip])
    da.DomainAdapter(backbone, task="regression", strategies=[da.MimicAugment("rain")])  # pixel-level: fine
    with pytest.raises(ValueError, match=r"RandomCrop turns \(48, 48, 3\) images into \(32, 32, 3\)"):
        _segmentation_adapter([da.MimicAugment(A.RandomCrop(32, 32, p=1.0))])
    assert da.tasks.supported_tasks(flip) == da.tasks.TASKS
