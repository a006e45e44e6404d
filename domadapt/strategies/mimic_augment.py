"""Domain-mimicking augmentation: make labeled source images look like the target domain."""

from __future__ import annotations

import threading
import zlib

import keras
import numpy as np
import tensorflow as tf

from domadapt.strategies import _tf_presets
from domadapt.strategies._tf_presets import TF_PRESETS
from domadapt.strategy import Strategy

try:
    import albumentations as A
except ImportError:  # a declared dependency; the error says how to get it
    A = None


def _odd(value):
    value = int(round(value))
    return value if value % 2 else value + 1


# Each preset: severity s in [0, 1] -> an albumentations transform. This table is the
# documentation (README "Augmentation presets" lists the same parameters).
PRESETS = {
    "rain": lambda s: A.RandomRain(
        slant_range=(-10, 10), drop_length=None, drop_width=1, blur_value=3,
        brightness_coefficient=1.0 - 0.3 * s, rain_type=("drizzle" if s < 0.34 else "heavy" if s < 0.67 else "torrential"),
        p=1.0,
    ),
    "fog": lambda s: A.RandomFog(fog_coef_range=(0.1 + 0.4 * s, 0.2 + 0.6 * s), alpha_coef=0.08, p=1.0),
    "snow": lambda s: A.RandomSnow(snow_point_range=(0.05 + 0.2 * s, 0.1 + 0.4 * s), brightness_coeff=1.5 + s, p=1.0),
    "night": lambda s: A.Compose([
        A.RandomGamma(gamma_limit=(120 + 130 * s, 140 + 160 * s), p=1.0),
        A.RandomBrightnessContrast(brightness_limit=(-0.1 - 0.4 * s, -0.05 - 0.3 * s), contrast_limit=(-0.3 * s, 0), p=1.0),
        A.GaussNoise(std_range=(0.01, 0.01 + 0.05 * s), p=1.0),
    ]),
    "sun_flare": lambda s: A.RandomSunFlare(
        flare_roi=(0, 0, 1, 0.5), src_radius=100, num_flare_circles_range=(2, 2 + int(6 * s)), p=1.0
    ),
    "shadow": lambda s: A.RandomShadow(
        shadow_roi=(0, 0.3, 1, 1), num_shadows_limit=(1, 1 + int(2 * s)), shadow_dimension=5,
        shadow_intensity_range=(0.2 + 0.3 * s, 0.3 + 0.5 * s), p=1.0,
    ),
    # A flat grey sky: desaturated, darker, lower contrast, slightly soft. Cheap (no
    # RandomFog, whose per-particle loop makes it ~50 images/s).
    "overcast": lambda s: A.Compose([
        A.ColorJitter(brightness=(0.9 - 0.3 * s, 0.95 - 0.2 * s), contrast=(0.7 - 0.3 * s, 0.9 - 0.3 * s),
                      saturation=(0.6 - 0.5 * s, 0.8 - 0.5 * s), hue=(0, 0), p=1.0),
        A.GaussianBlur(sigma_limit=(0.3, 0.3 + 0.7 * s), p=1.0),
    ]),
    "motion_blur": lambda s: A.MotionBlur(blur_limit=(3, _odd(3 + 12 * s)), p=1.0),
    "noise": lambda s: A.GaussNoise(std_range=(0.02 + 0.1 * s, 0.04 + 0.2 * s), p=1.0),
}
# Transforms of albumentations that only accept 3-channel images.
_RGB_ONLY = ("rain", "fog", "snow", "sun_flare", "shadow", "overcast")
METHODS = {"fda": "fda_metadata", "histogram": "hm_metadata", "pda": "pda_metadata"}


def _target_transform(method, severity):
    if method == "fda":
        return A.FDA(beta_limit=(0.0, 0.01 + 0.14 * severity), p=1.0)
    if method == "histogram":
        return A.HistogramMatching(blend_ratio=(0.3 + 0.5 * severity, 0.5 + 0.5 * severity), p=1.0)
    # Blending is done by MimicAugment.augment: albumentations 2.0.8 blends float
    # images wrongly (a blend ratio of 0.8 saturates them to white).
    return A.PixelDistributionAdaptation(blend_ratio=(1.0, 1.0), transform_type="pca", p=1.0)


def _pda_blend_range(severity):
    return 0.3 + 0.5 * severity, 0.5 + 0.5 * severity


def _check_unit(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"Argument `{name}` must be a number in [0, 1]; received {name}={value!r}.")
    return float(value)


@keras.saving.register_keras_serializable(package="domadapt")
class MimicAugment(Strategy):
    """Augment labeled source images so they look like the target domain.

    Built on albumentations: a weather/lighting preset, any albumentations
    transform, or target-referenced style transfer (:meth:`from_target`). Runs in
    the adapter's ``tf.data`` pipeline (parallel map workers), before batches reach
    the accelerator; labels are untouched.

    Presets (severity s in [0, 1]; see ``PRESETS`` for the exact parameters):
    ``rain`` (RandomRain, drizzle/heavy/torrential, brightness 1 - 0.3 s), ``fog``
    (RandomFog, fog 0.1+0.4s..0.2+0.6s), ``snow`` (RandomSnow), ``night`` (gamma up,
    brightness and contrast down, sensor noise), ``sun_flare``, ``shadow``,
    ``overcast`` (desaturate, flatten, light fog), ``motion_blur``, ``noise``.

    Determinism: during ``fit`` each batch's random draws are seeded from ``seed``,
    the batch's step number in the run and its pixels, so every epoch draws fresh
    augmentations (also with ``shuffle=False``), and a run is reproducible whatever
    the number of parallel workers, also after a resume. ``augment(images, seed=)``
    draws from ``seed`` and the pixels.

    Images: uint8, or float in [0, 1] (float in [0, 255] is detected per batch and
    scaled there and back); 1-channel images are expanded to RGB for transforms
    that need it and converted back.

    Args:
        transform: a preset name or an albumentations transform.
        severity: preset strength in [0, 1].
        p: probability that an image is augmented.
        apply_to: ``"source"`` (default) or ``"both"`` (also target batches).
        seed: base seed; ``None`` draws one.
        engine: ``"albumentations"`` (default: in the ``tf.data`` pipeline, on CPU
            workers) or ``"tf"``: for the presets ``night``, ``noise`` and
            ``overcast``, the same parameters as in-graph ops inside the compiled
            train step, on the accelerator, so augmentation never waits on CPU
            workers. Same statistics as the albumentations engine, not the same pixels.

    Example:

    ```python
    import numpy as np, domadapt as da
    images = (np.random.rand(4, 32, 32, 3) * 255).astype("uint8")
    rainy = da.MimicAugment("rain", severity=0.7).augment(images, seed=0)
    ```
    """

    uses_target = False

    def __init__(self, transform="rain", severity=0.5, p=1.0, apply_to="source", seed=None, engine="albumentations",
                 **kwargs):
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
        self.seed = int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else int(seed)
        self.reference_method = reference_method
        self.num_references = int(num_references)
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
        if engine not in ("albumentations", "tf"):
            raise ValueError(f"Argument `engine` must be 'albumentations' or 'tf'; received engine={engine!r}.")
        if engine == "tf" and not (isinstance(self.transform, str) and self.transform in TF_PRESETS):
            raise ValueError(
                f"Argument `engine`: engine='tf' exists for the presets {sorted(TF_PRESETS)}; received "
                f"transform={transform!r}" + (f", method={reference_method!r}" if reference_method else "") + "."
            )
        self.engine = engine
        # Declared capabilities: which hooks the adapter calls for this configuration.
        self.transforms_source = engine != "tf"
        self.transforms_target = engine != "tf" and apply_to == "both"
        self.augments_in_step = engine == "tf"
        self._seed_generator = None
        self._local = threading.local()

    def setup(self, adapter):
        if self.engine == "tf":
            # Created here, under the adapter's tf.distribute scope; its state is saved
            # with the adapter, so a resumed run continues the same random sequence.
            self._seed_generator = keras.random.SeedGenerator(self.seed, name="augment_seed")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_target(cls, target_images=None, method="fda", severity=0.5, p=1.0, num_references=32, seed=None, **kwargs):
        """Style transfer toward the target: each source image takes the style of a target image.

        ``method``: ``"fda"`` (Fourier domain adaptation: swap low frequencies of the
        amplitude spectrum; Yang & Soatto 2020), ``"histogram"`` (per-channel
        histogram matching), ``"pda"`` (pixel distribution adaptation, PCA). Reference
        images: ``num_references`` images sampled from ``target_images`` if given,
        otherwise from the unlabeled target stream when ``fit`` starts, so only
        unlabeled target data is needed.

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
                transform = PRESETS[self.transform](self.severity)
                if self.transform == "sun_flare":  # its radius is in pixels: scale with the image
                    transform = A.RandomSunFlare(
                        flare_roi=(0, 0, 1, 0.5), src_radius=max(2, int(0.4 * max(image_shape[:2]))),
                        num_flare_circles_range=(2, 2 + int(6 * self.severity)), p=1.0,
                    )
            else:
                transform = A.from_dict(A.to_dict(self.transform))
            cache[image_shape] = transform
        return cache[image_shape]

    def augment(self, images, seed=None):
        """Augment a numpy batch ``(N, H, W, C)`` eagerly and return it (same shape, dtype and range)."""
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"Argument `images`: expected a batch of shape (N, H, W, C); received {images.shape}.")
        if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
            raise TypeError(f"Argument `images`: expected uint8 or float images; received dtype {images.dtype}.")
        if self.reference_method is not None and self.references is None:
            raise ValueError("No reference images yet: pass target_images to from_target(), or call set_references().")
        if len(images) == 0:
            return images.copy()
        base = self.seed if seed is None else int(seed)
        batch_seed = zlib.crc32(np.ascontiguousarray(images).tobytes(), base & 0xFFFFFFFF)
        if self.engine == "tf":
            seed_pair = tf.constant([base & 0x7FFFFFFF, batch_seed & 0x7FFFFFFF], tf.int32)
            return _tf_presets.apply(tf.constant(images), self.transform, self.severity, self.p, seed_pair).numpy()
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
            (isinstance(self.transform, str) and self.transform in _RGB_ONLY) or self.reference_method is not None
        )
        references = self._references_like(work) if self.reference_method is not None else None
        output = np.empty_like(work)
        for index, image in enumerate(work):
            if rng.random() >= self.p:
                output[index] = image
                continue
            source = np.repeat(image, 3, axis=-1) if expand else image
            extra = {METHODS[self.reference_method]: references} if references is not None else {}
            result = transform(image=source, **extra)["image"]
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
        return output.astype(images.dtype)

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

    def _augment_tensor(self, images, step):
        def augment(batch, step_number):
            # A seed of its own for every (seed, step): fresh draws each epoch, the same on a rerun.
            seed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, int(step_number)]).generate_state(1)[0]
            return self.augment(batch, seed=int(seed))

        step = tf.constant(0, tf.int64) if step is None else tf.cast(step, tf.int64)
        augmented = tf.numpy_function(augment, [images, step], images.dtype, stateful=False)
        augmented.set_shape(images.shape)
        return augmented

    def transform_source(self, images, labels, step=None):
        return self._augment_tensor(images, step), labels

    def transform_target(self, images, step=None):
        return self._augment_tensor(images, step) if self.apply_to == "both" else images

    def augment_in_step(self, images, domain):
        if domain == "target" and self.apply_to != "both":
            return images
        if self._seed_generator is None:  # used outside an adapter
            self._seed_generator = keras.random.SeedGenerator(self.seed, name="augment_seed")
        seed_pair = tf.cast(self._seed_generator.next(), tf.int32)
        return _tf_presets.apply(images, self.transform, self.severity, self.p, seed_pair)

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
