"""The one parameter table of MimicAugment's presets and style transfers.

Both engines read it: ``mimic_augment`` builds the albumentations transforms from
it, ``_tf_presets`` draws the in-graph parameters from it, so the two cannot drift.
Each entry maps a severity s in [0, 1] to the preset's parameters, named as the
albumentations argument they feed (sampled intervals end in ``_range``/``_limit``).
"""

from __future__ import annotations


def odd(value):
    """The nearest odd integer at or above ``round(value)``."""
    value = int(round(value))
    return value if value % 2 else value + 1


def _rain(s):
    return {
        "slant_range": (-10, 10), "drop_width": 1, "blur_value": 3, "drop_color": (200, 200, 200),
        "brightness_coefficient": 1.0 - 0.3 * s,
        "rain_type": "drizzle" if s < 0.34 else "heavy" if s < 0.67 else "torrential",
    }


def _fog(s):
    return {"fog_coef_range": (0.1 + 0.4 * s, 0.2 + 0.6 * s), "alpha_coef": 0.08}


def _snow(s):
    return {"snow_point_range": (0.05 + 0.2 * s, 0.1 + 0.4 * s), "brightness_coeff": 1.5 + s}


def _night(s):
    return {
        "gamma_limit": (120 + 130 * s, 140 + 160 * s),
        "brightness_limit": (-0.1 - 0.4 * s, -0.05 - 0.3 * s), "contrast_limit": (-0.3 * s, 0),
        "std_range": (0.01, 0.01 + 0.05 * s),
    }


def _sun_flare(s):
    # src_radius_fraction: the sun's radius as a fraction of the longer image side
    # (albumentations takes pixels; MimicAugment scales it with each image size).
    return {"flare_roi": (0, 0, 1, 0.5), "src_radius_fraction": 0.4, "num_flare_circles_range": (2, 2 + int(6 * s))}


def _shadow(s):
    return {
        "shadow_roi": (0, 0.3, 1, 1), "num_shadows_limit": (1, 1 + int(2 * s)), "shadow_dimension": 5,
        "shadow_intensity_range": (0.2 + 0.3 * s, 0.3 + 0.5 * s),
    }


def _overcast(s):
    # A flat grey sky: desaturated, darker, lower contrast, slightly soft.
    return {
        "brightness": (0.9 - 0.3 * s, 0.95 - 0.2 * s), "contrast": (0.7 - 0.3 * s, 0.9 - 0.3 * s),
        "saturation": (0.6 - 0.5 * s, 0.8 - 0.5 * s), "sigma_limit": (0.3, 0.3 + 0.7 * s),
    }


def _motion_blur(s):
    return {"blur_limit": (3, odd(3 + 12 * s))}


def _noise(s):
    return {"std_range": (0.02 + 0.1 * s, 0.04 + 0.2 * s)}


PRESET_PARAMETERS = {
    "rain": _rain, "fog": _fog, "snow": _snow, "night": _night, "sun_flare": _sun_flare, "shadow": _shadow,
    "overcast": _overcast, "motion_blur": _motion_blur, "noise": _noise,
}

# Target-referenced style transfers (MimicAugment.from_target).
METHOD_PARAMETERS = {
    "fda": lambda s: {"beta_limit": (0.0, 0.01 + 0.14 * s)},
    "histogram": lambda s: {"blend_ratio": (0.3 + 0.5 * s, 0.5 + 0.5 * s)},
    "pda": lambda s: {"blend_ratio": (0.3 + 0.5 * s, 0.5 + 0.5 * s)},
}


def preset_parameters(name, severity):
    """The parameters of preset ``name`` at ``severity``."""
    return PRESET_PARAMETERS[name](severity)


def method_parameters(method, severity):
    """The parameters of style-transfer ``method`` at ``severity``."""
    return METHOD_PARAMETERS[method](severity)
