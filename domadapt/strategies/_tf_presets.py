"""In-graph versions of the cheap MimicAugment presets (``engine="tf"``).

They follow the albumentations presets of ``mimic_augment.PRESETS`` parameter for
parameter, drawn per image, so the two engines give images with the same
statistics (not the same pixels). They run inside the compiled train step, on
the accelerator, on float32 images in [0, 1].
"""

from __future__ import annotations

import tensorflow as tf


def _uniform(count, low, high, seed):
    return tf.random.stateless_uniform([count, 1, 1, 1], seed=seed, minval=low, maxval=high)


def _noise(images, std_low, std_high, seeds):
    count = tf.shape(images)[0]
    std = _uniform(count, std_low, std_high, seeds[0])
    return images + std * tf.random.stateless_normal(tf.shape(images), seed=seeds[1])


def noise(images, severity, seeds):
    # GaussNoise(std_range=(0.02 + 0.1 s, 0.04 + 0.2 s)): std as a fraction of the value range.
    return _noise(images, 0.02 + 0.1 * severity, 0.04 + 0.2 * severity, seeds[:2])


def night(images, severity, seeds):
    count = tf.shape(images)[0]
    # RandomGamma(gamma_limit=(120 + 130 s, 140 + 160 s)): gamma = limit / 100.
    gamma = _uniform(count, (120 + 130 * severity) / 100, (140 + 160 * severity) / 100, seeds[0])
    images = tf.pow(tf.clip_by_value(images, 0.0, 1.0), gamma)
    # RandomBrightnessContrast(brightness (-0.1 - 0.4 s, -0.05 - 0.3 s), contrast (-0.3 s, 0)):
    # image * (1 + contrast) + brightness, brightness relative to the maximum value.
    contrast = _uniform(count, -0.3 * severity, 0.0, seeds[1])
    brightness = _uniform(count, -0.1 - 0.4 * severity, -0.05 - 0.3 * severity, seeds[2])
    images = images * (1.0 + contrast) + brightness
    # GaussNoise(std_range=(0.01, 0.01 + 0.05 s)).
    return _noise(tf.clip_by_value(images, 0.0, 1.0), 0.01, 0.01 + 0.05 * severity, seeds[3:5])


def _gaussian_blur(images, sigma):
    """Separable Gaussian blur with one sigma per batch (a depthwise convolution)."""
    radius = 3
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    channels = tf.shape(images)[-1]
    horizontal = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
    vertical = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    blurred = tf.nn.depthwise_conv2d(padded, horizontal, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")


def overcast(images, severity, seeds):
    count = tf.shape(images)[0]
    # ColorJitter(brightness (0.9 - 0.3 s, 0.95 - 0.2 s), contrast (0.7 - 0.3 s, 0.9 - 0.3 s),
    # saturation (0.6 - 0.5 s, 0.8 - 0.5 s)), as factors, in that order.
    images = images * _uniform(count, 0.9 - 0.3 * severity, 0.95 - 0.2 * severity, seeds[0])
    grey = tf.reduce_mean(images, axis=-1, keepdims=True)
    mean = tf.reduce_mean(grey, axis=[1, 2, 3], keepdims=True)
    contrast = _uniform(count, 0.7 - 0.3 * severity, 0.9 - 0.3 * severity, seeds[1])
    images = (images - mean) * contrast + mean
    saturation = _uniform(count, 0.6 - 0.5 * severity, 0.8 - 0.5 * severity, seeds[2])
    grey = tf.reduce_mean(images, axis=-1, keepdims=True)
    images = grey + (images - grey) * saturation
    # GaussianBlur(sigma_limit=(0.3, 0.3 + 0.7 s)), one sigma per batch.
    sigma = tf.random.stateless_uniform([], seed=seeds[3], minval=0.3, maxval=0.3 + 0.7 * severity + 1e-6)
    return _gaussian_blur(tf.clip_by_value(images, 0.0, 1.0), sigma)


TF_PRESETS = {"noise": noise, "night": night, "overcast": overcast}


def apply(images, preset, severity, p, seed_pair):
    """Augment a batch in the graph: same dtype and value range as ``images``.

    ``seed_pair`` is a ``[2]`` int tensor (from a keras SeedGenerator); uint8-range
    batches (maximum above 1) are scaled to [0, 1] and back, as the albumentations engine does.
    """
    original_dtype = images.dtype
    images = tf.cast(images, tf.float32)
    scale = tf.where(tf.reduce_max(images) > 1.0 + 1e-3, 255.0, 1.0)
    work = images / scale
    seeds = [tf.stack([seed_pair[0], seed_pair[1] + index]) for index in range(6)]
    augmented = tf.clip_by_value(TF_PRESETS[preset](work, severity, seeds), 0.0, 1.0)
    chosen = tf.random.stateless_uniform([tf.shape(images)[0], 1, 1, 1], seed=seeds[5]) < p
    output = tf.where(chosen, augmented, work) * scale
    if original_dtype.is_integer:
        output = tf.round(output)
    return tf.cast(output, original_dtype)
