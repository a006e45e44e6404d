"""In-graph versions of every MimicAugment preset and style transfer (``engine="tf"``).

They draw, per image, the parameters of the albumentations transforms from the
shared table (``_weather_table``), and render the same effect with tensor ops, so
the two engines give images with the same statistics (not the same pixels). They
run inside the compiled train step (XLA included), on float32 images in [0, 1],
from stateless random ops: the same seed pair gives the same pixels.

Where albumentations draws objects one by one (rain drops, fog particles, flare
circles), the ops here draw the same numbers of objects of the same sizes as a
random mask and render it with a per-image convolution
(:func:`_per_image_filter`); what is approximated is said at each op.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from domadapt.strategies._weather_table import method_parameters, preset_parameters

NUM_SEEDS = 6


# Stateless draws: the same seed pair gives the same pixels, in eager mode and within
# an XLA-compiled step; XLA generates a different stream than TensorFlow's CPU kernels,
# so an eager call and a compiled one agree in distribution, not pixel for pixel.
def _random_uniform(shape, seed, minval=0.0, maxval=None, dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def _random_normal(shape, seed):
    return tf.random.stateless_normal(shape, seed=seed)


def _uniform(count, low, high, seed, shape=(1, 1, 1)):
    return _random_uniform([count, *shape], seed=seed, minval=low, maxval=high)


def _randint(count, low, high, seed):
    """Integers uniform in [low, high] (both included), as float32 ``[count]``."""
    draw = _random_uniform([count], seed=seed, minval=0.0, maxval=1.0)
    return tf.floor(low + draw * (high - low + 1 - 1e-4))


def _static_size(images):
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None:
        raise ValueError(
            "engine='tf' needs images of a static height and width inside the train step; "
            f"received a batch of shape {images.shape}."
        )
    return int(height), int(width)


def _grid(height, width):
    """Pixel coordinates ``(y, x)``, each of shape [1, H, W, 1]."""
    y, x = np.mgrid[0:height, 0:width].astype("float32")
    return tf.constant(y[None, ..., None]), tf.constant(x[None, ..., None])


def _per_image_filter(images, kernels, padding, mode="REFLECT"):
    """Correlate each image with its own kernel: ``images`` [B, H, W, C], ``kernels`` [B, kh, kw].

    The batch goes into the channel axis of one depthwise convolution, so the kernel
    can differ per image and the op stays a single XLA convolution. ``padding`` is
    ``[[top, bottom], [left, right]]``, reflected (OpenCV's BORDER_REFLECT_101) or, with
    ``mode="CONSTANT"``, zeros (for masks of objects, which must not reflect back in).
    """
    channels = tf.shape(images)[-1]
    count = tf.shape(images)[0]
    padded = tf.pad(images, [[0, 0], padding[0], padding[1], [0, 0]], mode=mode)
    height, width = tf.shape(padded)[1], tf.shape(padded)[2]
    stacked = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, height, width, count * channels])
    filters = tf.repeat(tf.transpose(kernels, [1, 2, 0]), channels, axis=2)[..., None]
    output = tf.nn.depthwise_conv2d(stacked, filters, [1, 1, 1, 1], "VALID")
    out_height, out_width = tf.shape(output)[1], tf.shape(output)[2]
    return tf.transpose(tf.reshape(output, [out_height, out_width, count, channels]), [2, 0, 1, 3])


def _blur(images, kernel):
    """The same small 2-D kernel (a numpy array) on every image and channel, reflected borders."""
    kernel = np.asarray(kernel, "float32")
    height, width = kernel.shape
    channels = images.shape[-1]
    filters = tf.constant(np.tile(kernel[:, :, None, None], [1, 1, channels, 1]))
    padded = tf.pad(images, [[0, 0], [height // 2, height // 2], [width // 2, width // 2], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(padded, filters, [1, 1, 1, 1], "VALID")


def _gaussian_kernel(size, sigma=None):
    """OpenCV's Gaussian kernel for an odd ``size`` (sigma 0: derived from the size)."""
    sigma = sigma or 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    offsets = np.arange(size) - size // 2
    line = np.exp(-0.5 * (offsets / sigma) ** 2)
    line /= line.sum()
    return np.outer(line, line)


# ----------------------------------------------------------------------------- photometric
def _noise(images, std_low, std_high, seeds):
    count = tf.shape(images)[0]
    std = _uniform(count, std_low, std_high, seeds[0])
    return images + std * _random_normal(tf.shape(images), seed=seeds[1])


def noise(images, severity, seeds):
    # GaussNoise(std_range): std as a fraction of the value range.
    low, high = preset_parameters("noise", severity)["std_range"]
    return _noise(images, low, high, seeds[:2])


def night(images, severity, seeds):
    table = preset_parameters("night", severity)
    count = tf.shape(images)[0]
    # RandomGamma(gamma_limit): gamma = limit / 100.
    gamma = _uniform(count, table["gamma_limit"][0] / 100, table["gamma_limit"][1] / 100, seeds[0])
    images = tf.pow(tf.clip_by_value(images, 0.0, 1.0), gamma)
    # RandomBrightnessContrast: image * (1 + contrast) + brightness (relative to the maximum value).
    contrast = _uniform(count, *table["contrast_limit"], seeds[1])
    brightness = _uniform(count, *table["brightness_limit"], seeds[2])
    images = images * (1.0 + contrast) + brightness
    return _noise(tf.clip_by_value(images, 0.0, 1.0), *table["std_range"], seeds[3:5])


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


def _grey(images):
    """OpenCV's RGB2GRAY (ColorJitter's grey for contrast and saturation); 1-channel: itself."""
    if images.shape[-1] != 3:
        return tf.reduce_mean(images, axis=-1, keepdims=True)
    return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


def overcast(images, severity, seeds):
    table = preset_parameters("overcast", severity)
    count = tf.shape(images)[0]
    # ColorJitter(brightness, contrast, saturation), as factors, in that order.
    images = images * _uniform(count, *table["brightness"], seeds[0])
    mean = tf.reduce_mean(_grey(images), axis=[1, 2, 3], keepdims=True)
    images = (images - mean) * _uniform(count, *table["contrast"], seeds[1]) + mean
    grey = _grey(images)
    images = grey + (images - grey) * _uniform(count, *table["saturation"], seeds[2])
    # GaussianBlur(sigma_limit), one sigma per batch.
    low, high = table["sigma_limit"]
    sigma = _random_uniform([], seed=seeds[3], minval=low, maxval=high + 1e-6)
    return _gaussian_blur(tf.clip_by_value(images, 0.0, 1.0), sigma)


def snow(images, severity, seeds):
    """RandomSnow(method="bleach"): in HLS, lightness L below the snow point is multiplied
    by ``brightness_coeff``; hue and saturation are kept.

    Keeping H and S while L changes scales each pixel's offset from L by the ratio of
    the chroma ``1 - |2L - 1|`` after and before, so no HLS round trip is needed.
    """
    table = preset_parameters("snow", severity)
    count = tf.shape(images)[0]
    snow_point = _uniform(count, *table["snow_point_range"], seeds[0])
    threshold = snow_point / 2 + 1 / 3  # albumentations: snow_point * 255 / 2 + 255 / 3, in uint8
    lightness = (tf.reduce_max(images, -1, keepdims=True) + tf.reduce_min(images, -1, keepdims=True)) / 2
    brightened = tf.where(lightness < threshold, tf.minimum(lightness * table["brightness_coeff"], 1.0), lightness)
    chroma_before = 1.0 - tf.abs(2.0 * lightness - 1.0)
    chroma_after = 1.0 - tf.abs(2.0 * brightened - 1.0)
    ratio = tf.math.divide_no_nan(chroma_after, chroma_before)
    return brightened + (images - lightness) * ratio


# ----------------------------------------------------------------------------- weather objects
def _line_kernels(slant, length, half_width):
    """Kernels [B, length + 1, 2 half_width + 1] of 4-connected lines from (0, 0) to
    (slant, length), laid out for :func:`_per_image_filter` with top/left padding
    (row i is the offset ``length - i`` down the line, column j the offset ``half_width - j``).

    A 4-connected line (OpenCV's LINE_4, as RandomRain draws) covers ``|dx| + |dy| + 1``
    pixels: row ``dy`` covers the columns the line passes through between ``dy ± 1/2``.
    """
    rows = tf.constant(float(length) - np.arange(length + 1, dtype="float32"))[None, :, None]
    columns = tf.constant(float(half_width) - np.arange(2 * half_width + 1, dtype="float32"))[None, None, :]
    slant = slant[:, None, None]
    start = slant * tf.maximum(rows - 0.5, 0.0) / length
    end = slant * tf.minimum(rows + 0.5, float(length)) / length
    low = tf.round(tf.minimum(start, end))
    high = tf.round(tf.maximum(start, end))
    return tf.cast((columns >= low) & (columns <= high), tf.float32)


def rain(images, severity, seeds):
    """RandomRain: slanted drops of ``drop_color`` drawn 1 px wide (LINE_4), the rain layer
    box-blurred, added (saturating), then the image scaled by ``brightness_coefficient``.

    As albumentations: ``H // 4`` (drizzle), ``H`` (heavy) or ``2 H`` (torrential) drops
    of length ``H // 8``, starting uniformly in ``[0, W) x [0, H - length)``, one slant
    per image. Drops are a Bernoulli mask with that expected count (not an exact count).
    """
    table = preset_parameters("rain", severity)
    height, width = _static_size(images)
    count = tf.shape(images)[0]
    length = max(1, height // 8)
    num_drops = {"drizzle": height // 4, "heavy": height, "torrential": 2 * height}[table["rain_type"]]
    start_rows = max(1, height - length)
    probability = num_drops / (width * start_rows)
    y, _ = _grid(height, width)
    drops = _random_uniform([count, height, width, 1], seed=seeds[0]) < probability
    drops = tf.cast(drops & (y < start_rows), tf.float32)
    # Drop end points x + slant are cast to int32 (x >= 0): the slant is floored in effect.
    slant_low, slant_high = table["slant_range"]
    slant = tf.floor(_random_uniform([count], seed=seeds[1], minval=slant_low, maxval=slant_high))
    half_width = int(math.ceil(max(abs(slant_low), abs(slant_high))))
    kernels = _line_kernels(slant, length, half_width)
    layer = _per_image_filter(drops, kernels, [[length, 0], [half_width, half_width]], mode="CONSTANT")
    layer = tf.minimum(layer, 1.0) * (np.mean(table["drop_color"]) / 255.0)
    blur = table["blur_value"]
    if blur > 1:
        layer = _blur(layer, np.full((blur, blur), 1.0 / blur**2))
    images = tf.minimum(images + layer, 1.0)
    return images * table["brightness_coefficient"]


def _gauss_circle_count(radius):
    """Pixels of a filled OpenCV circle of integer ``radius`` (lattice points in the disc)."""
    offsets = np.arange(-radius, radius + 1)
    return int((offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).sum())


def fog(images, severity, seeds):
    """RandomFog: white discs blended one by one with alpha ``alpha_coef * intensity``, in
    up to 10 nested central regions shrinking by 10 %, then a Gaussian blur.

    A pixel covered by N discs keeps ``(1 - alpha)^N`` of its colour. As
    albumentations: the regions, the number of particles per region and the disc radii
    (uniform in ``[max_r // 2, max_r)``, ``max_r = 0.1 min(H, W) intensity``). Here the
    disc centres are a Bernoulli mask with the per-region density and N is that mask
    convolved with the disc (expected coverage over the radius draw).
    """
    table = preset_parameters("fog", severity)
    height, width = _static_size(images)
    count = tf.shape(images)[0]
    intensity = _uniform(count, *table["fog_coef_range"], seeds[0], shape=())
    region_size = tf.maximum(1.0, tf.floor((width // 3) * intensity))
    center_x, center_y = int(width / 2 - 0.5), int(height / 2 - 0.5)
    y, x = _grid(height, width)
    centres = tf.zeros([count, height, width, 1])
    region_width, region_height = width, height
    for iteration in range(10):
        active = (region_width > region_size) & (region_height > region_size)  # [B]
        # Particles per region, as int(area / size^2 * intensity * 10), spread over the
        # region randint draws from (both ends included).
        particles = tf.floor(region_width * region_height / tf.square(region_size) * intensity * 10)
        spread = (2 * (region_width // 2) + 1) * (2 * (region_height // 2) + 1)
        density = tf.where(active, particles / spread, 0.0)[:, None, None, None]
        inside = (tf.abs(x - center_x) <= region_width // 2) & (tf.abs(y - center_y) <= region_height // 2)
        draw = _random_uniform([count, height, width, 1], seed=tf.stack([seeds[1][0], seeds[1][1] + 97 * iteration]))
        # A density above 1 per pixel (tiny regions) adds its whole part in expectation.
        centres += tf.where(inside, tf.where(draw < tf.minimum(density, 1.0), 1.0, 0.0) + tf.maximum(density - 1.0, 0.0), 0.0)
        region_width, region_height = int(region_width * 0.9), int(region_height * 0.9)
    max_radius = tf.maximum(2.0, tf.floor(min(height, width) * 0.1 * intensity))  # [B]
    min_radius = tf.maximum(1.0, tf.floor(max_radius / 2))
    largest = max(2, int(min(height, width) * 0.1 * table["fog_coef_range"][1]))
    offsets = np.arange(-largest, largest + 1, dtype="float32")
    distance = tf.constant(np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2))[None]
    radii = tf.range(1.0, largest + 1.0)[:, None, None, None]  # [R, 1, 1, 1]
    drawn = tf.cast((radii >= min_radius[None, :, None, None]) & (radii < max_radius[None, :, None, None]), tf.float32)
    covers = tf.cast(distance[None] <= radii, tf.float32)  # [R, 1, k, k]
    kernels = tf.reduce_sum(drawn * covers, 0) / tf.maximum(tf.reduce_sum(drawn, 0), 1.0)  # [B, k, k]
    coverage = _per_image_filter(centres, kernels, [[largest, largest], [largest, largest]], mode="CONSTANT")
    alpha = table["alpha_coef"] * intensity[:, None, None, None]
    transmission = tf.pow(1.0 - alpha, coverage)
    images = images * transmission + (1.0 - transmission)
    blur_size = max(3, min(height, width) // 30)
    blur_size += 1 - blur_size % 2
    return _blur(images, _gaussian_kernel(blur_size))


def sun_flare(images, severity, seeds):
    """RandomSunFlare(method="overlay"): small flare circles along a line through the sun,
    each alpha-blended, then the sun as concentric white discs blended with alphas that
    fall off with the radius; the same draws as albumentations (centre in ``flare_roi``,
    angle, number, alpha, radius and colour of the circles)."""
    table = preset_parameters("sun_flare", severity)
    height, width = _static_size(images)
    count = tf.shape(images)[0]
    y, x = _grid(height, width)
    x_min, y_min, x_max, y_max = table["flare_roi"]
    centre_x = tf.floor(width * _uniform(count, x_min, x_max, seeds[0]))
    centre_y = tf.floor(height * _uniform(count, y_min, y_max, seeds[1]))
    angle = 2 * math.pi * _uniform(count, 0.0, 1.0, seeds[2])
    low, high = table["num_flare_circles_range"]
    num_circles = _randint(count, low, high, seeds[3])[:, None, None, None]
    max_radius = max(2, int(height * 0.01))
    channels = images.shape[-1]
    output, overlay_colour = images, tf.zeros_like(images)
    covered = tf.zeros_like(images[..., :1], dtype=tf.bool)
    weighted, total = 0.0, 0.0
    for index in range(high):
        seed = tf.stack([seeds[4][0], seeds[4][1] + 31 * index])
        draws = _random_uniform([count, 3 + channels], seed=seed)
        active = tf.cast(index < num_circles, tf.float32)
        alpha = (0.05 + 0.15 * draws[:, 0])[:, None, None, None] * active
        along = (draws[:, 1][:, None, None, None] * width) - centre_x  # t in [-cx, W - cx)
        circle_x = tf.floor(centre_x + along * tf.cos(angle))
        circle_y = tf.floor(centre_y + along * tf.sin(angle))
        radius = tf.pow(tf.floor(1 + draws[:, 2] * (max_radius - 1e-4)), 3.0)[:, None, None, None]
        colour = (204.0 + tf.floor(draws[:, 3:] * 51.999))[:, None, None, :] / 255.0  # randint(204, 255)
        inside = (tf.square(x - circle_x) + tf.square(y - circle_y) <= tf.square(radius)) & (active > 0)
        covered = covered | inside
        overlay_colour = tf.where(inside, colour, overlay_colour)
        overlay = tf.where(covered, overlay_colour, images)
        output = overlay * alpha + output * (1.0 - alpha)
        weighted += alpha * radius
        total += radius * active
    # The sun: num_times = src_radius // 10 discs of radii linspace(1, src_radius).
    src_radius = max(2, int(table["src_radius_fraction"] * max(height, width)))
    num_times = src_radius // 10
    max_alpha = tf.minimum(weighted / tf.maximum(total, 1e-6) * 5.0, 1.0)
    distance = tf.square(x - centre_x) + tf.square(y - centre_y)
    radii = np.linspace(1, src_radius, num=num_times) if num_times else []
    alphas = np.linspace(0.0, 1.0, num=num_times) if num_times else []
    for index in range(num_times):
        alpha = (max_alpha * alphas[num_times - index - 1]) ** 3
        inside = tf.cast(distance <= int(radii[index]) ** 2, tf.float32)
        output = output + inside * alpha * (1.0 - output)
    return output


def _inside_polygon(x, y, vertices_x, vertices_y):
    """Pixels a filled polygon covers, vertices [B, n] (a static n): the even-odd test of
    pixel centres, plus the outline (centres within half a pixel of an edge), as
    OpenCV's fillPoly draws it (measured: 11.2 % vs OpenCV's 11.0 % of a 48 px image
    for RandomShadow's polygons; 8.8 % without the outline)."""
    inside = tf.zeros_like(x + vertices_x[:, :1, None, None], dtype=tf.bool)
    outline = tf.zeros_like(inside)
    num_vertices = vertices_x.shape[1]
    for index in range(num_vertices):
        x0, y0 = vertices_x[:, index, None, None, None], vertices_y[:, index, None, None, None]
        x1 = vertices_x[:, (index + 1) % num_vertices, None, None, None]
        y1 = vertices_y[:, (index + 1) % num_vertices, None, None, None]
        crosses = (y0 > y) != (y1 > y)
        at_x = x0 + (y - y0) * (x1 - x0) / tf.where(tf.equal(y1, y0), 1.0, y1 - y0)
        inside = inside ^ (crosses & (x < at_x))
        edge_x, edge_y = x1 - x0, y1 - y0
        length = tf.maximum(tf.square(edge_x) + tf.square(edge_y), 1e-6)
        along = tf.clip_by_value(((x - x0) * edge_x + (y - y0) * edge_y) / length, 0.0, 1.0)
        outline = outline | (tf.square(x - x0 - along * edge_x) + tf.square(y - y0 - along * edge_y) <= 0.25)
    return inside | outline


def shadow(images, severity, seeds):
    """RandomShadow: up to ``num_shadows_limit`` random polygons of ``shadow_dimension``
    vertices in ``shadow_roi``, each multiplying the pixels it covers by ``1 - intensity``.
    Shadows that overlap darken twice, as albumentations."""
    table = preset_parameters("shadow", severity)
    height, width = _static_size(images)
    count = tf.shape(images)[0]
    y, x = _grid(height, width)
    x_min, y_min, x_max, y_max = table["shadow_roi"]
    x_min, x_max, y_min, y_max = int(x_min * width), int(x_max * width), int(y_min * height), int(y_max * height)
    low, high = table["num_shadows_limit"]
    num_shadows = _randint(count, low, high, seeds[0])
    dimension = table["shadow_dimension"]
    for index in range(high):
        seed = tf.stack([seeds[1][0], seeds[1][1] + 31 * index])
        draws = _random_uniform([count, 2 * dimension + 1], seed=seed)
        vertices_x = tf.floor(x_min + draws[:, :dimension] * (x_max - x_min - 1e-4))
        vertices_y = tf.floor(y_min + draws[:, dimension : 2 * dimension] * (y_max - y_min - 1e-4))
        intensity = table["shadow_intensity_range"][0] + draws[:, -1] * (
            table["shadow_intensity_range"][1] - table["shadow_intensity_range"][0])
        inside = _inside_polygon(x, y, vertices_x, vertices_y) & (index < num_shadows)[:, None, None, None]
        images = tf.where(inside, images * (1.0 - intensity)[:, None, None, None], images)
    return images


def motion_blur(images, severity, seeds):
    """MotionBlur: a line kernel of odd size k in ``blur_limit``, random angle, direction
    bias and shift (albumentations' ``create_motion_kernel``, rasterised the same way:
    k points along the line rounded to the grid), normalised, reflected borders."""
    table = preset_parameters("motion_blur", severity)
    count = tf.shape(images)[0]
    low, high = table["blur_limit"]
    low, high = max(3, low + (low % 2 == 0)), max(3, high + (high % 2 == 0))
    high = max(high, low)
    size = low + 2 * _randint(count, 0, (high - low) // 2, seeds[0])  # [B]
    draws = _random_uniform([count, 4], seed=seeds[1])
    angle = draws[:, 0] * 2 * math.pi
    direction = draws[:, 1] * 2 - 1
    half = tf.floor(size / 2)  # line_length = k // 2; also the kernel's centre
    t_start = tf.where(direction > 0, -half * (1 - direction), -half)
    t_end = tf.where(direction < 0, half * (1 - tf.abs(direction)), half)
    shift_x = (draws[:, 2] * 2 - 1) * half / 2
    shift_y = (draws[:, 3] * 2 - 1) * half / 2
    steps = tf.constant(np.arange(high, dtype="float32"))[None]  # k points, the last repeated up to `high`
    fraction = tf.minimum(steps, size[:, None] - 1) / (size[:, None] - 1)
    t = t_start[:, None] + (t_end - t_start)[:, None] * fraction
    point_x = tf.clip_by_value(tf.round(half[:, None] + tf.cos(angle)[:, None] * t + shift_x[:, None]), 0.0, size[:, None] - 1)
    point_y = tf.clip_by_value(tf.round(half[:, None] + tf.sin(angle)[:, None] * t + shift_y[:, None]), 0.0, size[:, None] - 1)
    # Into a high x high kernel, the k x k one centred in it.
    offset = (high - size[:, None]) / 2
    grid = tf.constant(np.arange(high, dtype="float32"))
    hit_y = tf.equal(point_y[:, :, None] + offset[:, :, None], grid[None, None, :])  # [B, points, high]
    hit_x = tf.equal(point_x[:, :, None] + offset[:, :, None], grid[None, None, :])
    kernels = tf.cast(tf.reduce_any(hit_y[:, :, :, None] & hit_x[:, :, None, :], axis=1), tf.float32)
    kernels = kernels / tf.reduce_sum(kernels, axis=[1, 2], keepdims=True)
    radius = high // 2
    return _per_image_filter(images, kernels, [[radius, radius], [radius, radius]])


TF_PRESETS = {
    "rain": rain, "fog": fog, "snow": snow, "night": night, "sun_flare": sun_flare, "shadow": shadow,
    "overcast": overcast, "motion_blur": motion_blur, "noise": noise,
}
# Presets whose albumentations transform needs RGB: 1-channel images go through as grey RGB.
RGB_ONLY = ("rain", "fog", "snow", "sun_flare", "shadow", "overcast")


# ----------------------------------------------------------------------------- style transfer
def _pick_references(references, count, seed):
    index = _random_uniform([count], seed=seed, minval=0, maxval=tf.shape(references)[0], dtype=tf.int32)
    return tf.gather(references, index)


def _to_uint8_levels(images):
    return tf.cast(tf.clip_by_value(tf.round(images * 255.0), 0.0, 255.0), tf.int32)


def _channel_histograms(levels):
    """256-bin histograms [B, C, 256] of int levels [B, H, W, C]."""
    count, channels = tf.shape(levels)[0], tf.shape(levels)[3]
    by_channel = tf.transpose(tf.reshape(levels, [count, -1, channels]), [0, 2, 1])  # [B, C, N]
    segments = (tf.range(count * channels)[:, None] * 256) + tf.reshape(by_channel, [count * channels, -1])
    counts = tf.math.unsorted_segment_sum(tf.ones_like(segments, tf.float32), segments, count * channels * 256)
    return tf.reshape(counts, [count, channels, 256]), by_channel


def histogram(images, references, severity, seeds):
    """HistogramMatching: each image's channels take the cumulative histogram of a random
    reference image (skimage's ``match_histograms`` on 256 levels, as albumentations:
    ``np.interp`` of the source quantiles on the reference's occupied levels, truncated
    to uint8), blended with the image by a ratio drawn from ``blend_ratio``."""
    count = tf.shape(images)[0]
    levels = _to_uint8_levels(images)
    source_counts, by_channel = _channel_histograms(levels)
    reference_counts, _ = _channel_histograms(_to_uint8_levels(_pick_references(references, count, seeds[0])))
    source_quantiles = tf.cumsum(source_counts, axis=-1) / tf.reduce_sum(source_counts, -1, keepdims=True)
    reference_quantiles = tf.cumsum(reference_counts, axis=-1) / tf.reduce_sum(reference_counts, -1, keepdims=True)
    occupied = reference_counts > 0  # [B, C, 256]
    values = tf.range(256, dtype=tf.float32)
    # np.interp(source_quantiles, reference_quantiles[occupied], values[occupied]) by comparisons.
    q = source_quantiles[..., :, None]  # [B, C, 256 (source level), 1]
    r = reference_quantiles[..., None, :]  # [B, C, 1, 256 (reference level)]
    below = occupied[..., None, :] & (r < q)
    above = occupied[..., None, :] & (r >= q)
    lower = tf.reduce_max(tf.where(below, values, -1.0), -1)
    upper = tf.reduce_min(tf.where(above, values, 256.0), -1)
    first = tf.reduce_min(tf.where(occupied, values, 256.0), -1, keepdims=True)
    upper = tf.where(upper > 255.0, 255.0, upper)  # q never exceeds the last quantile (1) but for rounding
    lower_index, upper_index = tf.cast(tf.maximum(lower, 0.0), tf.int32), tf.cast(upper, tf.int32)
    lower_q = tf.gather(reference_quantiles, lower_index, batch_dims=2)
    upper_q = tf.gather(reference_quantiles, upper_index, batch_dims=2)
    weight = tf.math.divide_no_nan(source_quantiles - lower_q, upper_q - lower_q)
    mapped = tf.where(lower < 0.0, first, lower + weight * (upper - lower))
    mapped = tf.floor(mapped + 1e-4) / 255.0  # truncated to uint8, as albumentations
    matched = tf.gather(mapped, by_channel, batch_dims=2)  # [B, C, N]
    matched = tf.reshape(tf.transpose(matched, [0, 2, 1]), tf.shape(images))
    ratio = _uniform(count, *method_parameters("histogram", severity)["blend_ratio"], seeds[1])
    return ratio * matched + (1.0 - ratio) * images


def fda(images, references, severity, seeds):
    """FDA (Yang & Soatto 2020): the centred low-frequency box of each channel's amplitude
    spectrum (half-size ``floor(min(H, W) beta)``) is replaced by a random reference's;
    the phase is kept. ``beta`` is drawn from ``beta_limit`` per image."""
    height, width = _static_size(images)
    count = tf.shape(images)[0]
    chosen = _pick_references(references, count, seeds[0])
    beta = _uniform(count, *method_parameters("fda", severity)["beta_limit"], seeds[1], shape=())
    border = tf.floor(min(height, width) * beta)[:, None, None, None]
    centre_y, centre_x = height / 2 - 0.5, width / 2 - 0.5
    # The box in fftshift-ed coordinates; index k of the unshifted spectrum sits at (k + n // 2) % n.
    rows = tf.constant(((np.arange(height) + height // 2) % height).astype("float32"))[None, None, :, None]
    columns = tf.constant(((np.arange(width) + width // 2) % width).astype("float32"))[None, None, None, :]
    in_rows = (rows >= tf.maximum(0.0, tf.floor(centre_y - border))) & (rows < tf.minimum(tf.floor(centre_y + border), height))
    in_columns = (columns >= tf.maximum(0.0, tf.floor(centre_x - border))) & (
        columns < tf.minimum(tf.floor(centre_x + border), width))
    box = in_rows & in_columns  # [B, 1, H, W]
    source = tf.signal.fft2d(tf.complex(tf.transpose(images, [0, 3, 1, 2]), 0.0))
    target = tf.signal.fft2d(tf.complex(tf.transpose(chosen, [0, 3, 1, 2]), 0.0))
    amplitude = tf.where(box, tf.abs(target), tf.abs(source))
    mutated = tf.complex(amplitude, 0.0) * tf.exp(tf.complex(0.0, tf.math.angle(source)))
    return tf.transpose(tf.math.real(tf.signal.ifft2d(mutated)), [0, 2, 3, 1])


def _principal_axes(pixels):
    """Mean [B, 1, C] and PCA components [B, C, C] (rows, by decreasing variance, sign as
    scikit-learn's: the largest-magnitude entry of each component positive)."""
    mean = tf.reduce_mean(pixels, axis=1, keepdims=True)
    centred = pixels - mean
    covariance = tf.matmul(centred, centred, transpose_a=True) / tf.cast(tf.shape(pixels)[1], tf.float32)
    _, vectors = tf.linalg.eigh(covariance)
    components = tf.reverse(tf.transpose(vectors, [0, 2, 1]), axis=[1])
    largest = tf.gather(components, tf.argmax(tf.abs(components), axis=-1), batch_dims=2)
    return mean, components * tf.where(largest < 0, -1.0, 1.0)[..., None]


def pda(images, references, severity, seeds):
    """PixelDistributionAdaptation(transform_type="pca"): pixels projected on the image's
    own principal axes and re-expressed on a random reference's (uint8 levels, clipped),
    blended with the image by a ratio drawn from ``blend_ratio``. The reference's axes
    are flipped when the signs of the two component matrices' traces differ, as albumentations."""
    count = tf.shape(images)[0]
    channels = tf.shape(images)[-1]
    source = tf.reshape(tf.round(images * 255.0), [count, -1, channels])
    reference = tf.reshape(tf.round(_pick_references(references, count, seeds[0]) * 255.0), [count, -1, channels])
    source_mean, source_axes = _principal_axes(source)
    reference_mean, reference_axes = _principal_axes(reference)
    flip = tf.sign(tf.linalg.trace(source_axes)) != tf.sign(tf.linalg.trace(reference_axes))
    reference_axes = tf.where(flip[:, None, None], -reference_axes, reference_axes)
    projected = tf.matmul(source - source_mean, source_axes, transpose_b=True)
    result = tf.clip_by_value(tf.matmul(projected, reference_axes) + reference_mean, 0.0, 255.0) / 255.0
    ratio = _uniform(count, *method_parameters("pda", severity)["blend_ratio"], seeds[1])
    return ratio * tf.reshape(result, tf.shape(images)) + (1.0 - ratio) * images


TF_METHODS = {"histogram": histogram, "fda": fda, "pda": pda}


def references_like(references, height, width, channels):
    """Reference images as float32 in [0, 1], resized to (height, width), with ``channels``."""
    references = tf.convert_to_tensor(references)
    scale = 255.0 if references.dtype == tf.uint8 or float(tf.reduce_max(tf.cast(references, tf.float32))) > 1.0 + 1e-3 else 1.0
    references = tf.cast(references, tf.float32) / scale
    if references.shape[1:3] != (height, width):
        references = tf.image.resize(references, (height, width), method="bilinear")
    if references.shape[-1] != channels:
        references = (tf.repeat(references, channels, axis=-1) if references.shape[-1] == 1
                      else tf.reduce_mean(references, axis=-1, keepdims=True))
    return tf.clip_by_value(references, 0.0, 1.0)


def apply(images, preset, severity, p, seed_pair, references=None):
    """Augment a batch in the graph: same dtype and value range as ``images``.

    ``preset`` is a preset name or a style-transfer method (``references``: float32
    [R, H, W, C] in [0, 1]). ``seed_pair`` is a ``[2]`` int tensor (from a keras
    SeedGenerator); uint8 batches, and float batches in the uint8 range (maximum
    above 1), are scaled to [0, 1] and back, as the albumentations engine does.
    """
    original_dtype = images.dtype
    images = tf.cast(images, tf.float32)
    if original_dtype == tf.uint8:
        scale = tf.constant(255.0)
    else:
        scale = tf.where(tf.reduce_max(images) > 1.0 + 1e-3, 255.0, 1.0)
    work = images / scale
    seed_pair = tf.cast(seed_pair, tf.int32)
    # seeds[0:5] feed the ops, seeds[5] the choice of images (probability p).
    seeds = [tf.stack([seed_pair[0], seed_pair[1] + index]) for index in range(NUM_SEEDS)]
    grey = work.shape[-1] == 1 and (preset in RGB_ONLY or preset in TF_METHODS)
    source = tf.clip_by_value(work, 0.0, 1.0)
    source = tf.repeat(source, 3, axis=-1) if grey else source
    if preset in TF_METHODS:
        if references.shape[-1] != source.shape[-1]:
            references = tf.repeat(references, 3, axis=-1) if grey else references
        augmented = TF_METHODS[preset](source, references, severity, seeds)
    else:
        augmented = TF_PRESETS[preset](source, severity, seeds)
    if grey:
        augmented = tf.reduce_mean(augmented, axis=-1, keepdims=True)
    augmented = tf.clip_by_value(augmented, 0.0, 1.0)
    chosen = _random_uniform([tf.shape(images)[0], 1, 1, 1], seed=seeds[5]) < p
    output = tf.where(chosen, augmented, work) * scale
    if original_dtype.is_integer:
        output = tf.round(output)
    return tf.cast(output, original_dtype)
