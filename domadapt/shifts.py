"""Independent target domains for evaluation: renderers of rain, low light, fog, defocus + JPEG,
colour cast, snow, a pixelated sensor and underwater light, and a second real source of digits
(TrueType fonts vs handwriting).

Used by the demo and by the multi-shift suite (``benchmarks/shifts.py``); public so
that anyone can check a method on shifts the library was not built from:
``da.shifts.RENDERERS[name](images, seed)``.

Every renderer here is written from scratch with numpy (plus OpenCV's generic
filter/encode primitives and Pillow's font rasteriser). None calls albumentations
or reuses a preset of ``da.MimicAugment`` or ``da.datasets.render_rain``: a benchmark that
rendered its target with the transform the library ships would measure the library
against itself.

Each renderer maps uint8 RGB images ``(N, H, W, 3)`` and a seed to uint8 RGB images
of the same shape, deterministically.
"""

from __future__ import annotations

import functools
import glob
import numbers

import cv2
import numpy as np


def _renderer(render):
    """Check a renderer's arguments before any pixel is touched: uint8 RGB ``(N, H, W, 3)`` and an integer seed.
    (Float images would be read as 0-255 and come out near black; grey ones broadcast into other shapes.)"""

    @functools.wraps(render)
    def checked(images, seed):
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            described = (f"an array of dtype {images.dtype} and shape {images.shape}" if isinstance(images, np.ndarray)
                         else f"{type(images).__name__}")
            raise ValueError(f"Argument `images` of {render.__name__} must be a uint8 numpy array of RGB images shaped "
                             f"(N, H, W, 3); received {described}. Convert with "
                             "`np.repeat(grey[..., None], 3, -1)` or `(x * 255).round().astype('uint8')` first.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"Argument `seed` of {render.__name__} must be an integer; received {seed!r}.")
        return render(images, seed)

    return checked


def _as_float(images):
    return images.astype("float32") / 255.0


def _to_uint8(images):
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype("uint8")


def _smooth_field(rng, num_images, height, width, cells=4):
    """A smooth random field in [0, 1] per image: coarse noise upsampled bicubically."""
    coarse = rng.random((num_images, cells, cells)).astype("float32")
    fields = np.stack([cv2.resize(c, (width, height), interpolation=cv2.INTER_CUBIC) for c in coarse])
    low, high = fields.min(axis=(1, 2), keepdims=True), fields.max(axis=(1, 2), keepdims=True)
    return (fields - low) / np.maximum(high - low, 1e-6)


def _line_kernel(length, angle_degrees):
    """A normalised line segment of ``length`` pixels at ``angle_degrees`` from the vertical."""
    size = int(length) | 1
    kernel = np.zeros((size, size), "float32")
    centre = size // 2
    radians = np.deg2rad(angle_degrees)
    for t in np.linspace(-centre, centre, 4 * size):
        row = int(round(centre + t * np.cos(radians)))
        col = int(round(centre + t * np.sin(radians)))
        kernel[row, col] = 1.0
    return kernel / kernel.sum()


@_renderer
def rain_streaks(images, seed):
    """Rain: a grey wet-day veil, darker scene, and bright slanted streaks of our own model.

    Streaks: sparse random drops (density 1-2%) smeared along one per-image direction
    (10-30 degrees from vertical, 7-11 px long), added at 35-50% brightness; the scene is
    pulled 35% towards a grey sky (value 0.45) and slightly softened (wet lens).
    """
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num, height, width, _ = x.shape
    out = np.empty_like(x)
    for i in range(num):
        drops = (rng.random((height, width)) < rng.uniform(0.01, 0.02)).astype("float32")
        kernel = _line_kernel(rng.integers(7, 12), rng.uniform(10, 30) * rng.choice([-1, 1]))
        streaks = cv2.filter2D(drops, -1, kernel * kernel.shape[0] / 2.0, borderType=cv2.BORDER_REFLECT)
        streaks = np.clip(streaks, 0, 1) * rng.uniform(0.35, 0.50)
        veiled = 0.65 * x[i] * 0.85 + 0.35 * 0.45
        veiled = cv2.GaussianBlur(veiled, (0, 0), 0.6)
        out[i] = veiled + streaks[..., None] * (1.0 - veiled)
    return _to_uint8(out)


@_renderer
def low_light(images, seed):
    """Low light: under-exposure with a gamma curve, photon shot noise, read noise, then auto-gain.

    Scene radiance = (x ** 1.5) * exposure (0.18-0.28); photons ~ Poisson(radiance * 100
    electrons); + Gaussian read noise (std 1.5-2.5 e-, independent per colour channel);
    the camera gain brings the mean back up by 2.5x, amplifying the noise; black level 0.03.
    """
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num = len(x)
    full_well = 100.0
    exposure = rng.uniform(0.18, 0.28, (num, 1, 1, 1)).astype("float32")
    radiance = np.power(x, 1.5) * exposure
    electrons = rng.poisson(radiance * full_well).astype("float32")
    electrons += rng.normal(0.0, 1.0, x.shape).astype("float32") * rng.uniform(1.5, 2.5, (num, 1, 1, 1)).astype("float32")
    signal = electrons / full_well * 2.5 + 0.03
    return _to_uint8(signal)


@_renderer
def fog_veil(images, seed):
    """Fog: contrast loss towards a bright veil with a spatially varying transmission.

    Koschmieder's model ``I = J * t + A * (1 - t)``: airlight A in 0.82-0.92, transmission
    t a smooth random field in [0.22, 0.50] (thicker fog in patches), plus light scattering
    blur (sigma 0.8).
    """
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num, height, width, _ = x.shape
    field = _smooth_field(rng, num, height, width)
    low = rng.uniform(0.22, 0.30, (num, 1, 1)).astype("float32")
    transmission = (low + field * rng.uniform(0.15, 0.20, (num, 1, 1)).astype("float32"))[..., None]
    airlight = rng.uniform(0.82, 0.92, (num, 1, 1, 1)).astype("float32")
    fogged = x * transmission + airlight * (1.0 - transmission)
    return _to_uint8(np.stack([cv2.GaussianBlur(image, (0, 0), 0.8) for image in fogged]))


def _disk_kernel(radius):
    size = 2 * int(np.ceil(radius)) + 1
    grid = np.arange(size) - size // 2
    distance = np.sqrt(grid[:, None] ** 2 + grid[None, :] ** 2)
    kernel = np.clip(radius + 0.5 - distance, 0.0, 1.0).astype("float32")  # anti-aliased disk
    return kernel / kernel.sum()


@_renderer
def defocus_jpeg(images, seed):
    """A cheap camera: lens defocus (a disk point-spread function, radius 1.2-1.8 px) then
    JPEG compression at quality 12-25 (8x8 blocking and ringing on 28-pixel images)."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        blurred = cv2.filter2D(image.astype("float32"), -1, _disk_kernel(rng.uniform(1.2, 1.8)), borderType=cv2.BORDER_REFLECT)
        blurred = np.clip(blurred + 0.5, 0, 255).astype("uint8")
        ok, encoded = cv2.imencode(".jpg", blurred, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(12, 26))])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode an image.")
        out[i] = cv2.imdecode(encoded, cv2.IMREAD_COLOR).reshape(image.shape)
    return out


@_renderer
def sodium_cast(images, seed):
    """Colour cast: a sodium-lamp white balance (orange), a lifted tinted black level and
    lower contrast. Per-image channel gains R 0.95-1.05, G 0.62-0.78, B 0.25-0.42; black
    level (0.16, 0.10, 0.03) +- 20%; contrast 0.75."""
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num = len(x)
    gains = np.stack([rng.uniform(0.95, 1.05, num), rng.uniform(0.62, 0.78, num), rng.uniform(0.25, 0.42, num)], axis=1)
    black = np.array([0.16, 0.10, 0.03], "float32") * rng.uniform(0.8, 1.2, (num, 1))
    out = black[:, None, None, :] + 0.75 * x * gains[:, None, None, :].astype("float32")
    return _to_uint8(out)


# --------------------------------------------------------------------------- held-back shifts
# Added on 2026-12-02, after the selection rule shipped in domadapt.validators.compare and the
# collapse guard's thresholds were frozen: the suite reports them apart, as shifts no rule,
# default or threshold of the library was chosen on.

@_renderer
def snowfall(images, seed):
    """Snow: a cold, brighter, lower-contrast scene under falling flakes of our own model.

    Flakes: 2-5% of pixels seeded (strength 0.6-1), each grown into a soft disk (Gaussian,
    sigma 0.5-1.1 px) and smeared by wind along one per-image direction over 3 px; the field
    is scaled so its brightest flake saturates (flake peaks land at ~40-100% brightness); the
    scene is lifted towards a bluish white (0.80, 0.85, 0.92) by 25-40% and its contrast drops.
    """
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num, height, width, _ = x.shape
    sky = np.array([0.80, 0.85, 0.92], "float32")
    out = np.empty_like(x)
    for i in range(num):
        seeds = (rng.random((height, width)) < rng.uniform(0.02, 0.05)).astype("float32")
        seeds *= rng.uniform(0.6, 1.0, (height, width)).astype("float32")
        flakes = cv2.GaussianBlur(seeds, (0, 0), rng.uniform(0.5, 1.1))
        flakes = cv2.filter2D(flakes, -1, _line_kernel(3, rng.uniform(-60, 60)), borderType=cv2.BORDER_REFLECT)
        flakes = np.clip(flakes / max(float(flakes.max()), 1e-6) * 1.3, 0, 1)[..., None]
        lift = rng.uniform(0.25, 0.40)
        scene = (1.0 - lift) * x[i] + lift * sky
        out[i] = scene + flakes * (1.0 - scene)
    return _to_uint8(out)


@_renderer
def pixelated_sensor(images, seed):
    """A low-resolution sensor: area-averaged down to 8-11 px, shown with nearest-neighbour
    blocks at the original size, then Gaussian read noise (std 0.03-0.07) per pixel."""
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num, height, width, _ = x.shape
    out = np.empty_like(x)
    for i in range(num):
        side = int(rng.integers(8, 12))
        small = cv2.resize(x[i], (side, side), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(x[i].shape)
    out += rng.normal(0.0, 1.0, out.shape).astype("float32") * rng.uniform(0.03, 0.07, (num, 1, 1, 1)).astype("float32")
    return _to_uint8(out)


@_renderer
def underwater(images, seed):
    """Underwater: wavelength-dependent absorption (red lost first), a blue-green backscatter
    veil and moving caustic light.

    ``I = J * attenuation * t + backscatter * (1 - t)``: attenuation R 0.15-0.30, G 0.60-0.80,
    B 0.80-1.00; transmission t 0.55-0.75; backscatter (0.05, 0.35, 0.45) +- 15%; caustics a
    smooth multiplicative field of +-20%.
    """
    rng = np.random.default_rng(seed)
    x = _as_float(images)
    num, height, width, _ = x.shape
    attenuation = np.stack([rng.uniform(0.15, 0.30, num), rng.uniform(0.60, 0.80, num), rng.uniform(0.80, 1.00, num)],
                           axis=1).astype("float32")[:, None, None, :]
    transmission = rng.uniform(0.55, 0.75, (num, 1, 1, 1)).astype("float32")
    backscatter = (np.array([0.05, 0.35, 0.45], "float32") * rng.uniform(0.85, 1.15, (num, 1))).astype("float32")
    caustics = 0.8 + 0.4 * _smooth_field(rng, num, height, width, cells=6)[..., None]
    out = x * attenuation * caustics * transmission + backscatter[:, None, None, :] * (1.0 - transmission)
    return _to_uint8(out)


# --------------------------------------------------------------------------- real sources

def truetype_fonts():
    """Paths of the machine's TrueType fonts that can draw digits (``fc-list`` locations)."""
    paths = sorted(set(glob.glob("/usr/share/fonts/**/*.ttf", recursive=True)))
    return [p for p in paths if "Math" not in p]


def font_digits(num_images, seed, size=28):
    """Digits 0-9 typeset from the machine's TrueType fonts, white on black, as uint8 RGB.

    Per image: a random font, a height of 15-22 px, a rotation of +-12 degrees, a shift of
    +-3 px, a stroke of 0 or 1 px extra thickness. Returns ``(images, labels)``.
    """
    from PIL import Image, ImageDraw, ImageFont

    fonts = truetype_fonts()
    if not fonts:
        raise FileNotFoundError(
            "No TrueType fonts under /usr/share/fonts: the fonts->handwritten shift needs some "
            "(Debian: apt-get install fonts-dejavu-core)."
        )
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num_images)
    images = np.zeros((num_images, size, size, 3), "uint8")
    cache = {}
    for i, label in enumerate(labels):
        path = fonts[rng.integers(len(fonts))]
        point = int(rng.integers(18, 27))
        key = (path, point)
        if key not in cache:
            cache[key] = ImageFont.truetype(path, point)
        font = cache[key]
        canvas = Image.new("L", (2 * size, 2 * size), 0)
        draw = ImageDraw.Draw(canvas)
        stroke = int(rng.integers(0, 2))
        left, top, right, bottom = draw.textbbox((0, 0), str(label), font=font, stroke_width=stroke)
        origin = (size - (left + right) / 2, size - (top + bottom) / 2)
        draw.text(origin, str(label), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        canvas = canvas.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, center=(size, size))
        dx, dy = rng.integers(-3, 4, 2)
        crop = canvas.crop((size // 2 - dx, size // 2 - dy, size // 2 - dx + size, size // 2 - dy + size))
        images[i] = np.asarray(crop)[..., None]
    return images, labels.astype("int64")


def handwritten_digits(size=28):
    """scikit-learn's 1,797 handwritten 8x8 digits (UCI), upscaled to a 20-px box centred in
    ``size`` pixels as MNIST is, uint8 RGB. Returns ``(images, labels)``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    box = size - 8
    images = np.zeros((len(digits.images), size, size, 3), "uint8")
    for i, image in enumerate(digits.images):
        scaled = cv2.resize((image * (255.0 / 16.0)).astype("float32"), (box, box), interpolation=cv2.INTER_CUBIC)
        images[i, 4 : 4 + box, 4 : 4 + box] = np.clip(scaled, 0, 255).astype("uint8")[..., None]
    return images, digits.target.astype("int64")


RENDERERS = {
    "rain": rain_streaks,
    "low_light": low_light,
    "fog": fog_veil,
    "defocus_jpeg": defocus_jpeg,
    "colour_cast": sodium_cast,
    "snow": snowfall,
    "pixelated": pixelated_sensor,
    "underwater": underwater,
}
