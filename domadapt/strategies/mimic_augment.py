"""Domain-mimicking augmentation: make labeled source images look like the target domain."""

from __future__ import annotations

import functools
import numbers
import threading
import zlib

import keras
import numpy as np
import tensorflow as tf

from domadapt._checks import check_seed
from domadapt.data import check_positive_int
from domadapt.strategies import _tf_presets
from domadapt.strategies._tf_presets import RGB_ONLY, TF_METHODS, TF_PRESETS
from domadapt.strategies._weather_table import PRESET_PARAMETERS, method_parameters, preset_parameters
from domadapt.strategy import Strategy
from domadapt.tasks import TASKS

# The in-graph engine, for benchmarks and users who call it outside a train step.
tf_presets = _tf_presets

try:
    import albumentations as A
except ImportError:  # a declared dependency; the error says how to get it
    A = None


def _rain(t):
    return A.RandomRain(slant_range=t["slant_range"], drop_length=None, drop_width=t["drop_width"],
                        drop_color=t["drop_color"], blur_value=t["blur_value"],
                        brightness_coefficient=t["brightness_coefficient"], rain_type=t["rain_type"], p=1.0)


def _night(t):
    return A.Compose([
        A.RandomGamma(gamma_limit=t["gamma_limit"], p=1.0),
        A.RandomBrightnessContrast(brightness_limit=t["brightness_limit"], contrast_limit=t["contrast_limit"], p=1.0),
        A.GaussNoise(std_range=t["std_range"], p=1.0),
    ])


def _sun_flare(t, image_shape=None):
    # Its radius is in pixels: scaled with the image when the size is known.
    radius = 100 if image_shape is None else max(2, int(t["src_radius_fraction"] * max(image_shape[:2])))
    return A.RandomSunFlare(flare_roi=t["flare_roi"], src_radius=radius,
                            num_flare_circles_range=t["num_flare_circles_range"], p=1.0)


def _overcast(t):
    # Cheap (no RandomFog, whose per-particle loop makes it ~50 images/s).
    return A.Compose([
        A.ColorJitter(brightness=t["brightness"], contrast=t["contrast"], saturation=t["saturation"], hue=(0, 0), p=1.0),
        A.GaussianBlur(sigma_limit=t["sigma_limit"], p=1.0),
    ])


# Each preset: its parameters (from the table both engines read) -> an albumentations transform.
_BUILDERS = {
    "rain": _rain,
    "fog": lambda t: A.RandomFog(fog_coef_range=t["fog_coef_range"], alpha_coef=t["alpha_coef"], p=1.0),
    "snow": lambda t: A.RandomSnow(snow_point_range=t["snow_point_range"], brightness_coeff=t["brightness_coeff"], p=1.0),
    "night": _night,
    "sun_flare": _sun_flare,
    "shadow": lambda t: A.RandomShadow(shadow_roi=t["shadow_roi"], num_shadows_limit=t["num_shadows_limit"],
                                       shadow_dimension=t["shadow_dimension"],
                                       shadow_intensity_range=t["shadow_intensity_range"], p=1.0),
    "overcast": _overcast,
    "motion_blur": lambda t: A.MotionBlur(blur_limit=t["blur_limit"], p=1.0),
    "noise": lambda t: A.GaussNoise(std_range=t["std_range"], p=1.0),
}


def _preset_transform(name, severity, image_shape=None):
    parameters = preset_parameters(name, severity)
    if name == "sun_flare":
        return _sun_flare(parameters, image_shape)
    return _BUILDERS[name](parameters)


# Each preset: severity s in [0, 1] -> an albumentations transform. The parameters come
# from ``_weather_table`` (README "Augmentation presets" lists the same values).
PRESETS = {name: functools.partial(_preset_transform, name) for name in PRESET_PARAMETERS}
METHODS = {"fda": "fda_metadata", "histogram": "hm_metadata", "pda": "pda_metadata"}
ENGINES = ("auto", "albumentations", "tf")


def _target_transform(method, severity):
    parameters = method_parameters(method, severity)
    if method == "fda":
        return A.FDA(beta_limit=parameters["beta_limit"], p=1.0)
    if method == "histogram":
        return A.HistogramMatching(blend_ratio=parameters["blend_ratio"], p=1.0)
    # Blending is done by MimicAugment.augment: albumentations 2.0.8 blends float
    # images wrongly (a blend ratio of 0.8 saturates them to white).
    return A.PixelDistributionAdaptation(blend_ratio=(1.0, 1.0), transform_type="pca", p=1.0)


def _pda_blend_range(severity):
    return method_parameters("pda", severity)["blend_ratio"]


def _gpu_available():
    return bool(tf.config.list_logical_devices("GPU"))


def _moves_pixels(transform):
    """Whether an albumentations transform may move pixels, and so masks: any part that is not image-only."""
    if isinstance(transform, A.BaseCompose):
        return any(_moves_pixels(t) for t in transform.transforms)
    return not isinstance(transform, A.ImageOnlyTransform)


def _check_masks(masks, images, ignore_index):
    """Masks as int32 ``(N, H, W)`` matching ``images``; ``(N, H, W, 1)`` is accepted."""
    masks = np.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != images.shape[:3]:
        raise ValueError(
            f"Argument `masks`: expected one mask per image, shape {images.shape[:3]} (N, H, W); received "
            f"{np.asarray(masks).shape}."
        )
    if not np.issubdtype(masks.dtype, np.integer):
        raise TypeError(f"Argument `masks`: expected integer class indices; received dtype {masks.dtype}.")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
                                     or ignore_index < 0):
        raise ValueError(
            f"Argument `ignore_index` must be a non-negative integer or None; received ignore_index={ignore_index!r}."
        )
    return masks.astype(np.int32)


def _check_unit(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Argument `{name}` must be a number in [0, 1]; received {name}={value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="domadapt")
class MimicAugment(Strategy):
    """Augment labeled source images so they look like the target domain.

    Built on albumentations: a weather/lighting preset, any albumentations
    transform, or target-referenced style transfer (:meth:`from_target`). Runs in
    the adapter's ``tf.data`` pipeline (parallel map workers), before batches reach
    the accelerator. Labels are untouched, except segmentation masks: a custom
    transform that moves pixels (flip, crop, rotation) moves each mask with its
    image, and pixels it creates (rotated-in corners, padding) become the task's
    ``ignore_index``. Presets and ``from_target`` change pixel values only, so masks
    stay bit-identical; so do regression targets, for which a transform that moves
    pixels is refused (a steering angle or depth map cannot be moved for it).

    Presets (severity s in [0, 1]; see ``PRESETS`` for the exact parameters):
    ``rain`` (RandomRain, drizzle/heavy/torrential, brightness 1 - 0.3 s), ``fog``
    (RandomFog, fog 0.1+0.4s..0.2+0.6s), ``snow`` (RandomSnow), ``night`` (gamma up,
    brightness and contrast down, sensor noise), ``sun_flare``, ``shadow``,
    ``overcast`` (desaturate, flatten, light fog), ``motion_blur``, ``noise``.

    Determinism: during ``fit`` each batch's random draws are seeded from ``seed``,
    the batch's step number in the run and its pixels, so every epoch draws fresh
    augmentations (also with ``shuffle=False``), and a run is reproducible whatever
    the number of parallel workers, also after a resume. ``augment(images, seed=)``
    draws from ``seed`` and the pixels. With ``engine="tf"`` the draws come from
    stateless ops seeded by a SeedGenerator saved with the adapter: a rerun gives the
    same pixels, but an XLA-compiled step draws another stream than eager TensorFlow
    (same statistics, not the same pixels).

    Images: uint8, or float in [0, 1] (float in [0, 255] is detected per batch and
    scaled there and back); 1-channel images are expanded to RGB for transforms
    that need it and converted back.

    Args:
        transform: a preset name or an albumentations transform.
        severity: preset strength in [0, 1].
        p: probability that an image is augmented.
        apply_to: ``"source"`` (default) or ``"both"`` (also target batches).
        seed: base seed; ``None`` draws one.
        engine: where augmentation runs. ``"albumentations"``: in the ``tf.data``
            pipeline, on CPU workers. ``"tf"``: in-graph TensorFlow ops inside the
            compiled train step (XLA included), on the accelerator, so augmentation
            never waits on CPU workers; every preset and every ``from_target`` method
            has one, drawing its parameters from the same table as the albumentations
            engine (same statistics, not the same pixels); not for custom
            albumentations transforms (they may move pixels, which the in-graph
            engine never does). ``"auto"`` (default): ``"tf"`` when TensorFlow
            sees a GPU (``tf.config.list_logical_devices("GPU")``) and the transform
            has an in-graph version, otherwise ``"albumentations"``; decided when the
            strategy is first used (``active_engine``), so configuring GPUs after
            constructing it still works. ``get_config`` keeps the engine asked for.

    Example:

    ```python
    import numpy as np, domadapt as da
    images = (np.random.rand(4, 32, 32, 3) * 255).astype("uint8")
    rainy = da.MimicAugment("rain", severity=0.7).augment(images, seed=0)
    ```
    """

    uses_target = False
    tasks = TASKS

    def __init__(self, transform="rain", severity=0.5, p=1.0, apply_to="source", seed=None, engine="auto", **kwargs):
        reference_method = kwargs.pop("reference_method", None)
        num_references = kwargs.pop("num_references", 32)
        super().__init__(**kwargs)
        if A is None:
            raise ImportError("MimicAugment needs albumentations: pip install 'albumentations>=2.0.8,<2.1'")
        self.severity = _check_unit(severity, "severity")
        self.p = _check_unit(p, "p")
        if apply_to not in ("source", "both"):
            raise ValueError(f"Argument `apply_to` must be 'source' or 'both'; received apply_to={apply_to!r}.")
        self.apply_to = apply_to
        self.seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else check_seed(seed)
        self.reference_method = reference_method
        self.num_references = check_positive_int(num_references, "num_references")
        self.references = None
        if reference_method is not None:
            if reference_method not in METHODS:
                raise ValueError(f"Argument `method` must be one of {sorted(METHODS)}; received method={reference_method!r}.")
            self.transform = None
        elif isinstance(transform, str):
            if transform not in PRESETS:
                raise ValueError(f"Argument `transform`: unknown preset {transform!r}; presets: {sorted(PRESETS)}.")
            self.transform = transform
        elif isinstance(transform, dict):  # from get_config
            self.transform = A.from_dict(transform)
        elif isinstance(transform, A.BasicTransform | A.BaseCompose):
            self.transform = transform
        else:
            raise TypeError(
                f"Argument `transform` must be a preset name {sorted(PRESETS)} or an albumentations transform; "
                f"received {type(transform).__name__}."
            )
        if engine not in ENGINES:
            raise ValueError(f"Argument `engine` must be one of {ENGINES}; received engine={engine!r}.")
        in_graph = self.reference_method or (self.transform if isinstance(self.transform, str) else None)
        self._in_graph_name = in_graph if in_graph in TF_PRESETS or in_graph in TF_METHODS else None
        if engine == "tf" and self._in_graph_name is None:
            raise ValueError(
                "Argument `engine`: engine='tf' exists for the presets and the from_target methods, not for custom "
                f"albumentations transforms; received transform={type(transform).__name__}. Use "
                "engine='albumentations' (or 'auto')."
            )
        self.engine = engine
        self._active_engine = None if engine == "auto" else engine
        self._seed_generator = None
        self._reference_variable = None
        self._local = threading.local()
        # Set by setup() from the adapter's task: whether source labels are masks to move, and their fill.
        self._moves_masks = False
        self._ignore_index = None

    @property
    def moves_pixels(self):
        """Whether the transform may move pixels (flips, crops, rotations): never for presets and ``from_target``."""
        return self.reference_method is None and not isinstance(self.transform, str) and _moves_pixels(self.transform)

    @property
    def active_engine(self):
        """The engine in use: ``engine``, with ``"auto"`` resolved (GPU and an in-graph version: ``"tf"``)."""
        if self._active_engine is None:
            self._active_engine = "tf" if self._in_graph_name is not None and _gpu_available() else "albumentations"
        return self._active_engine

    # Declared capabilities: which hooks the adapter calls for this configuration.
    @property
    def transforms_source(self):
        return self.active_engine != "tf"

    @property
    def transforms_target(self):
        return self.active_engine != "tf" and self.apply_to == "both"

    @property
    def augments_in_step(self):
        return self.active_engine == "tf"

    def setup(self, adapter):
        task = getattr(adapter, "task", None)
        task_name = getattr(task, "name", "classification")
        if task_name == "regression" and self.moves_pixels:
            raise ValueError(
                f"MimicAugment: the transform {type(self.transform).__name__} moves pixels, but regression targets "
                "cannot be moved with the images (a steering angle, a depth map). With task='regression' use a "
                "preset, from_target() or pixel-level albumentations transforms only."
            )
        self._moves_masks = task_name == "segmentation" and self.moves_pixels
        self._ignore_index = getattr(task, "ignore_index", None)
        if self.moves_pixels and None not in adapter.image_shape[:2]:
            self._check_keeps_size(adapter.image_shape)
        if self.engine == "albumentations" or self._in_graph_name is None:
            return
        # Made for engine="auto" whichever engine it resolves to, so that an adapter saved
        # on a machine with a GPU has the same variables as one saved without.
        # Created here, under the adapter's tf.distribute scope; its state is saved
        # with the adapter, so a resumed run continues the same random sequence.
        self._seed_generator = keras.random.SeedGenerator(self.seed, name="augment_seed")
        if self.reference_method is not None:
            # The reference images, at the adapter's image size, where the compiled step reads them.
            height, width, channels = adapter.image_shape
            if height is None or width is None:
                if self.engine == "tf":
                    raise ValueError(
                        "MimicAugment.from_target(engine='tf') needs a backbone with a fixed input height and width; "
                        f"received image_shape={adapter.image_shape}. Use engine='albumentations'."
                    )
                self._active_engine = "albumentations"  # auto: no in-graph version for a variable image size
                return
            self._reference_variable = self.add_weight(
                shape=(self.num_references, height, width, channels), initializer="zeros", trainable=False,
                name="references", dtype="float32",
            )
            if self.references is not None:
                self._assign_references()

    def _check_keeps_size(self, image_shape):
        """A ValueError now, not deep in tf.data, when the transform changes the image size."""
        image = np.zeros(image_shape, np.uint8)
        output = self._transform_for(image.shape)(image=image, mask=np.zeros(image.shape[:2], np.int32))
        if output["image"].shape[:2] != image.shape[:2]:
            raise ValueError(
                f"Argument `transform`: {type(self.transform).__name__} turns {image.shape} images into "
                f"{output['image'].shape}; MimicAugment keeps the image size (a crop must be resized back, e.g. "
                "A.RandomResizedCrop(size=(H, W)))."
            )

    def _assign_references(self):
        variable = self._reference_variable
        _, height, width, channels = variable.shape
        references = _tf_presets.references_like(np.stack(self.references), height, width, channels)
        # Fewer images than num_references: cycled, so each is drawn about equally often.
        index = np.arange(variable.shape[0]) % len(self.references)
        variable.assign(tf.gather(references, index))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_target(cls, target_images=None, method="fda", severity=0.5, p=1.0, num_references=32, seed=None, **kwargs):
        """Style transfer toward the target: each source image takes the style of a target image.

        ``method``: ``"fda"`` (Fourier domain adaptation: swap low frequencies of the
        amplitude spectrum; Yang & Soatto 2020), ``"histogram"`` (per-channel
        histogram matching), ``"pda"`` (pixel distribution adaptation, PCA). Reference
        images: ``num_references`` images sampled from ``target_images`` if given,
        otherwise from the unlabeled target stream when ``fit`` starts, so only
        unlabeled target data is needed. Every method also runs in-graph
        (``engine="tf"``, or ``"auto"`` with a GPU): the references are then kept,
        resized to the backbone's input size, in a non-trainable variable the
        compiled step reads.

        Example:

        ```python
        import numpy as np, domadapt as da
        target = (np.random.rand(16, 32, 32, 3) * 80).astype("uint8")
        styled = da.MimicAugment.from_target(target, method="histogram").augment(
            (np.random.rand(4, 32, 32, 3) * 255).astype("uint8"), seed=0)
        ```
        """
        strategy = cls(severity=severity, p=p, seed=seed, reference_method=method, num_references=num_references, **kwargs)
        if target_images is not None:
            strategy.set_references(target_images)
        return strategy

    def set_references(self, target_images):
        """Sample ``num_references`` reference images from an array or dataset of target images."""
        if isinstance(target_images, tf.data.Dataset):
            spec = target_images.element_spec
            dataset = target_images.map(lambda *e: e[0]) if isinstance(spec, tuple) else target_images
            if len(dataset.element_spec.shape) == 4:
                dataset = dataset.unbatch()
            images = np.stack([x.numpy() for x in dataset.shuffle(4 * self.num_references, seed=self.seed).take(self.num_references)])
        else:
            images = np.asarray(target_images)
            if images.ndim not in (3, 4) or len(images) == 0:
                raise ValueError(f"Argument `target_images`: expected a batch of images; received shape {images.shape}.")
            if images.ndim == 3:
                images = images[..., None]
            rng = np.random.default_rng(self.seed)
            images = images[rng.choice(len(images), min(self.num_references, len(images)), replace=False)]
        self.references = [np.ascontiguousarray(image) for image in images]
        if self._reference_variable is not None:
            self._assign_references()
        return self

    @property
    def needs_target(self):
        return self.reference_method is not None and self.references is None  # references come from fit's target

    def on_fit_start(self, context):
        if self.needs_target:
            self.set_references(context.target_images)

    # ------------------------------------------------------------------ augmentation
    def _transform_for(self, image_shape):
        """A per-thread transform (albumentations transforms keep RNG state), built for this image size."""
        cache = getattr(self._local, "cache", None)
        if cache is None:
            cache = self._local.cache = {}
        if image_shape not in cache:
            if self.reference_method is not None:
                transform = _target_transform(self.reference_method, self.severity)
            elif isinstance(self.transform, str):
                transform = _preset_transform(self.transform, self.severity, image_shape)
            else:
                transform = A.from_dict(A.to_dict(self.transform))
            cache[image_shape] = transform
        return cache[image_shape]

    def augment(self, images, seed=None, *, masks=None, ignore_index=255):
        """Augment a numpy batch ``(N, H, W, C)`` eagerly and return it (same shape, dtype and range).

        With ``masks`` (segmentation masks ``(N, H, W)`` of class indices) it returns
        ``(images, masks)``: a transform that moves pixels moves each mask exactly as
        its image (nearest-neighbour, albumentations' default for masks: no new class
        values), and the pixels it creates get ``ignore_index`` whatever the
        transform's ``fill_mask`` (``None``: the transform's ``fill_mask`` is kept).
        Presets and ``from_target`` return the masks unchanged.

        Example:

        ```python
        import albumentations as A, numpy as np, domadapt as da
        images = (np.random.rand(2, 16, 16, 3) * 255).astype("uint8")
        masks = np.random.randint(0, 3, (2, 16, 16))
        flipped, moved = da.MimicAugment(A.HorizontalFlip(p=1.0)).augment(images, masks=masks)
        assert (moved == masks[:, :, ::-1]).all()
        ```
        """
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"Argument `images`: expected a batch of shape (N, H, W, C); received {images.shape}.")
        if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise TypeError(f"Argument `images`: expected uint8 or float images; received dtype {images.dtype}.")
        if masks is not None:
            mask_dtype = np.asarray(masks).dtype
            checked = _check_masks(masks, images, ignore_index)
            if not self.moves_pixels:
                return self.augment(images, seed), np.array(masks, copy=True)
            augmented, moved = self._augment(images, seed, checked, ignore_index)
            return augmented, moved.reshape(np.shape(masks)).astype(mask_dtype)
        return self._augment(images, seed)

    def _augment(self, images, seed, masks=None, ignore_index=None):
        """``augment``'s work on checked inputs; with masks (int32), returns ``(images, masks)``."""
        if self.reference_method is not None and self.references is None:
            raise ValueError("No reference images yet: pass target_images to from_target(), or call set_references().")
        if len(images) == 0:
            return images.copy() if masks is None else (images.copy(), masks.copy())
        base = self.seed if seed is None else int(seed)
        batch_seed = zlib.crc32(np.ascontiguousarray(images).tobytes(), base & 0xFFFFFFFF)
        if self.active_engine == "tf":
            seed_pair = tf.constant([base & 0x7FFFFFFF, batch_seed & 0x7FFFFFFF], tf.int32)
            references = None
            if self.reference_method is not None:
                references = _tf_presets.references_like(np.stack(self.references), *images.shape[1:])
            return _tf_presets.apply(tf.constant(images), self._in_graph_name, self.severity, self.p, seed_pair,
                                     references).numpy()
        rng = np.random.default_rng(batch_seed)
        transform = self._transform_for(images.shape[1:])
        transform.set_random_seed(batch_seed)
        work, scale = images, None
        if images.dtype == np.uint8 and self.reference_method == "pda":
            # albumentations 2.0.8's PixelDistributionAdaptation returns all zeros on
            # uint8 images here (opencv 5); it is correct on float images in [0, 1].
            work, scale = images.astype(np.float32) / 255.0, 255.0
        elif np.issubdtype(images.dtype, np.floating):
            work = images.astype(np.float32)
            if work.size and work.max() > 1.0 + 1e-3:
                scale = 255.0
                work = work / scale
            work = np.clip(work, 0.0, 1.0)
        channels = images.shape[-1]
        expand = channels == 1 and (
            (isinstance(self.transform, str) and self.transform in RGB_ONLY) or self.reference_method is not None
        )
        references = self._references_like(work) if self.reference_method is not None else None
        output = np.empty_like(work)
        moved_masks = None if masks is None else masks.copy()
        # Two constant masks go through with the class mask: a pixel the transform kept holds 1 in the
        # first and 2 in the second, a pixel it created holds the same fill value in both.
        ones = None if masks is None else np.ones(images.shape[1:3], np.uint8)
        for index, image in enumerate(work):
            if rng.random() >= self.p:
                output[index] = image
                continue
            source = np.repeat(image, 3, axis=-1) if expand else image
            extra = {METHODS[self.reference_method]: references} if references is not None else {}
            if masks is None:
                result = transform(image=source, **extra)["image"]
            else:
                transformed = transform(image=source, masks=[masks[index], ones, 2 * ones], **extra)
                result, (moved, first, second) = transformed["image"], transformed["masks"]
            if result.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"Argument `transform` turns {image.shape} images into {result.shape}; MimicAugment keeps the "
                    "image size (a crop must be resized back, e.g. A.RandomResizedCrop(size=(H, W)))."
                )
            if masks is not None:
                moved_masks[index] = moved if ignore_index is None else np.where(first == second, ignore_index, moved)
            if self.reference_method == "pda":
                weight = rng.uniform(*_pda_blend_range(self.severity))
                result = weight * result + (1.0 - weight) * source
            if expand:
                result = result.mean(axis=-1, keepdims=True)
            output[index] = result.reshape(image.shape)
        if scale is not None:
            output = output * scale
        if images.dtype == np.uint8:
            output = np.clip(np.round(output), 0, 255)
        output = output.astype(images.dtype)
        return output if masks is None else (output, moved_masks)

    def _references_like(self, work):
        """References converted to the batch's dtype, range and channel layout."""
        references = []
        for reference in self.references:
            if np.issubdtype(work.dtype, np.floating) and reference.dtype == np.uint8:
                reference = reference.astype(np.float32) / 255.0
            elif work.dtype == np.uint8 and np.issubdtype(reference.dtype, np.floating):
                reference = (np.clip(reference, 0, 1) * 255).astype(np.uint8)
            if reference.shape[-1] == 1:
                reference = np.repeat(reference, 3, axis=-1)
            references.append(np.ascontiguousarray(reference))
        return references

    def _augment_tensor(self, images, step, masks=None):
        def step_seed(step_number):
            # A seed of its own for every (seed, step): fresh draws each epoch, the same on a rerun.
            return int(np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(step_number)]).generate_state(1)[0])

        step = tf.constant(0, tf.int64) if step is None else tf.cast(step, tf.int64)
        if masks is None:
            augmented = tf.numpy_function(lambda batch, s: self.augment(batch, seed=step_seed(s)), [images, step],
                                          images.dtype, stateful=False)
            augmented.set_shape(images.shape)
            return augmented

        def augment_with_masks(batch, batch_masks, step_number):
            augmented, moved = self.augment(batch, seed=step_seed(step_number), masks=batch_masks,
                                            ignore_index=self._ignore_index)
            return augmented, moved.astype(batch_masks.dtype)

        augmented, moved = tf.numpy_function(augment_with_masks, [images, masks, step], [images.dtype, masks.dtype],
                                             stateful=False)
        augmented.set_shape(images.shape)
        moved.set_shape(masks.shape)
        return augmented, moved

    def transform_source(self, images, labels, step=None):
        if self._moves_masks:  # segmentation masks move with their images
            return self._augment_tensor(images, step, masks=labels)
        return self._augment_tensor(images, step), labels

    def transform_target(self, images, step=None):
        return self._augment_tensor(images, step) if self.apply_to == "both" else images

    def augment_in_step(self, images, domain):
        if domain == "target" and self.apply_to != "both":
            return images
        if self._seed_generator is None:  # used outside an adapter
            self._seed_generator = keras.random.SeedGenerator(self.seed, name="augment_seed")
        seed_pair = tf.cast(self._seed_generator.next(), tf.int32)
        references = None
        if self.reference_method is not None:
            if self._reference_variable is None:
                raise ValueError("MimicAugment.from_target(engine='tf') augments in the step only inside a DomainAdapter.")
            references = self._reference_variable
        return _tf_presets.apply(images, self._in_graph_name, self.severity, self.p, seed_pair, references)

    # ------------------------------------------------------------------ choosing a preset
    @classmethod
    def auto(cls, source_images, target_images, candidates=None, *, backbone=None, metric="mmd", severity=0.5,
             max_samples=300, seed=0, verbose=True):
        """Pick the preset that brings augmented source images closest to the target.

        For each candidate, augment a sample of source images and measure the gap to
        the target with ``metric`` (``"mmd"`` or ``"frechet"`` from ``da.gap``) on
        ``backbone`` features (default: images average-pooled to 8x8, as the
        "pixels" row of ``da.gap.measure``). Prints the ranking; returns the best
        strategy, with the ranking in its ``ranking`` attribute (list of
        ``(preset, gap, reduction)``).

        Example:

        ```python
        import numpy as np, domadapt as da
        rng = np.random.default_rng(0)
        source = (rng.random((40, 32, 32, 3)) * 255).astype("uint8")
        target = da.MimicAugment("night", severity=0.8).augment(source[20:], seed=1)
        best = da.MimicAugment.auto(source[:20], target, candidates=["night", "fog"], verbose=False)
        ```
        """
        from domadapt import gap
        from domadapt.gap.report import pixel_features

        candidates = list(candidates or PRESETS)
        unknown = [c for c in candidates if c not in PRESETS]
        if unknown:
            raise ValueError(f"Argument `candidates`: unknown presets {unknown}; presets: {sorted(PRESETS)}.")
        if metric not in ("mmd", "frechet"):
            raise ValueError(f"Argument `metric` must be 'mmd' or 'frechet'; received {metric!r}.")
        rng = np.random.default_rng(seed)
        source = np.asarray(source_images)
        target = np.asarray(target_images)
        source = source[rng.choice(len(source), min(max_samples, len(source)), replace=False)]
        target = target[rng.choice(len(target), min(max_samples, len(target)), replace=False)]
        distance = gap.mmd if metric == "mmd" else gap.frechet

        def embed(images):
            if backbone is None:
                return pixel_features(images.astype("float32"))
            return gap.features(backbone, images, images[:2], verbose=0)[0]

        target_features = embed(target)
        baseline = distance(embed(source), target_features)
        ranking = []
        for name in candidates:
            augmented = cls(name, severity=severity, seed=seed).augment(source)
            value = distance(embed(augmented), target_features)
            ranking.append((name, float(value), float(baseline - value)))
        ranking.sort(key=lambda row: row[1])
        if verbose:
            print(f"{'preset':<14}{metric:>12}{'reduction':>12}   (no augmentation: {baseline:.4g})")
            for name, value, reduction in ranking:
                print(f"{name:<14}{value:>12.4g}{reduction:>12.4g}")
        best = cls(ranking[0][0], severity=severity, seed=seed)
        best.ranking = ranking
        return best

    def get_config(self):
        config = {**super().get_config(), "severity": self.severity, "p": self.p, "apply_to": self.apply_to,
                  "seed": self.seed, "engine": self.engine}
        if self.reference_method is not None:
            # Reference images are data, not configuration: they are re-sampled from
            # the target stream at the next fit.
            config.update(reference_method=self.reference_method, num_references=self.num_references)
        elif isinstance(self.transform, str):
            config["transform"] = self.transform
        else:
            config["transform"] = A.to_dict(self.transform)
        return config
