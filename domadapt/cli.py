"""The ``domadapt`` command line: ``gap``, ``run``, ``compare``, ``recipes`` and ``demo``.

TensorFlow is imported inside the commands, never at module level, so that
``domadapt --help`` starts at once; ``main`` imports TensorFlow with its C++ start-up lines silenced (unless
``--verbose``), see ``_quiet_tensorflow``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat
import sys
from importlib import resources
from pathlib import Path

_BUILT_IN = "domadapt.recipes"
# The names of domadapt.gap.report.METRICS, here so that the parser needs no TensorFlow.
GAP_METRICS = ("coral", "domain_classifier_auc", "frechet", "kid", "mmd", "proxy_a_distance")
DEFAULT_GAP_METRICS = ("mmd", "frechet", "coral", "proxy_a_distance")
RESIZE_POLICIES = ("stretch", "crop", "pad")
# domadapt.validators.compare.DEFAULT_VALIDATORS, here so that the parser needs no TensorFlow.
COMPARE_VALIDATORS = ("source_accuracy", "entropy", "information_maximization", "snd", "dev", "mmd", "reverse")
# What `run` writes into --out: the only files it ever replaces or deletes there.
RUN_OUTPUTS = ("classifier.keras", "source_only.keras", "summary.json", "training.png", "skipped.txt")
RESUME_FOLDER = ".domadapt-resume"
SKIPPED_SHOWN = 3
# Images held in memory at once, whatever the folders' size: the gap samples of `run`, the images `compare` scores
# (its validators hold them), the decoded-image shuffle buffer of training. The label-shift estimate keeps only
# the classifier's outputs, of every source image and of at most LABEL_SHIFT_IMAGES target images.
GAP_IMAGES = 500
COMPARE_IMAGES = 2000
LABEL_SHIFT_IMAGES = 10_000
SHUFFLE_BUFFER = 256


class CommandError(Exception):
    """A mistake in the command's input: printed as one line, exit code 2."""


# --- small helpers -------------------------------------------------------------------------------------------------

def write_atomically(path, write):
    """Write ``path`` through ``write(temporary_path)`` and rename it into place.

    A run killed at any moment leaves either the complete previous file, the complete
    new one, or a hidden ``.NAME.PID.partial.SUFFIX`` file, never a truncated ``path``.
    A file replaced keeps its permissions, and a symbolic link is written through (the
    file it points to is replaced, the link stays).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        write(temporary)
        if path.exists():  # the rename would give the file the new one's mode (umask), e.g. 0600 -> 0644
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def write_json(path, value):
    return write_atomically(path, lambda temporary: temporary.write_text(json.dumps(value, indent=2)))


def _remove_stale_partials(folder, names):
    """Hidden partial files a killed run of ours left for ``names`` (nothing else is touched)."""
    for name in names:
        for stale in Path(folder).glob(f".{name}.*.partial*"):
            stale.unlink()


def progress_verbosity():
    """Keras ``verbose``: a progress bar on a terminal, one line per epoch in logs and CI."""
    return 1 if sys.stdout.isatty() else 2


def _report_skipped(skipped, where, out=None):
    """One line with the count and the first paths; the full list in ``out/skipped.txt``."""
    if not skipped:
        return
    shown = ", ".join(_printable(path) for path, _ in skipped[:SKIPPED_SHOWN])
    more = f" and {len(skipped) - SKIPPED_SHOWN} more" if len(skipped) > SKIPPED_SHOWN else ""
    listed = f" (all listed in {out / 'skipped.txt'})" if out is not None else ""
    print(f"Skipped {len(skipped)} unreadable file{'s' * (len(skipped) != 1)} in {where}: {shown}{more}{listed}")


def _skipped_text(skipped):
    return "".join(f"{_printable(path)}\t{_printable(reason)}\n" for path, reason in skipped)


def _printable(text):
    """A file name that is not valid UTF-8 (Python keeps its bytes as surrogates) with those bytes as \\x escapes:
    printing or writing it as is raises UnicodeEncodeError."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


# --- reading folders -------------------------------------------------------------------------------------------------
# Folders are streamed (domadapt.folders.image_folder: checked up front, decoded in parallel while used), so memory
# stays bounded whatever their size; .npy/.npz inputs are arrays already. What needs images in memory (the layer
# profile of `gap`, the validators of `compare`, the gap samples of `run`) draws a bounded random subset.

def _reader_options(args):
    return {"image_size": (args.image_size, args.image_size), "resize": getattr(args, "resize", None) or "stretch",
            "strict": bool(getattr(args, "strict", False))}


def _as_pairs(skipped):
    return [(str(path), str(reason)) for path, reason in skipped]


def open_unlabeled(path, args, max_images, seed):
    """``(images, skipped)``: an ``ImageFolder`` streamed from a folder (searched recursively), or the array of a
    ``.npy``/``.npz`` file."""
    from domadapt.folders import image_folder, read_images

    if Path(path).is_dir():
        folder = image_folder(path, labeled=False, max_images=max_images, seed=seed, **_reader_options(args))
        return folder, _as_pairs(folder.skipped)
    images, skipped = read_images(path, (args.image_size, args.image_size), max_images, seed=seed, return_skipped=True,
                                  **{k: v for k, v in _reader_options(args).items() if k != "image_size"})
    return images, _as_pairs(skipped)


def open_labeled(path, args, max_images, class_names=None, seed=0):
    """``(folder, skipped)``: an ``ImageFolder`` of ``(image, label)`` from a folder with one sub-folder per class."""
    from domadapt.folders import image_folder

    folder = image_folder(path, labeled=True, max_images=max_images, seed=seed, class_names=class_names,
                          **_reader_options(args))
    return folder, _as_pairs(folder.skipped)


def image_count(images):
    return images.count if hasattr(images, "count") else len(images)


def _at_least(images, path, count=2, why=""):
    if image_count(images) < count:
        raise CommandError(f"{path} holds {image_count(images)} usable image(s); at least {count} are needed{why}.")
    return images


def image_shape(images):
    return (*images.image_size, 3) if hasattr(images, "image_size") else tuple(images.shape[1:])


def stream(images):
    """What ``fit``/``da.gap.features`` take: the folder's unbatched ``tf.data`` dataset, or the array."""
    return images.dataset if hasattr(images, "dataset") else images


def sample(images, size, seed=0):
    """At most ``size`` images (and labels, for a labeled folder) in memory: a seeded random subset."""
    import numpy as np

    if not hasattr(images, "dataset"):
        if len(images) <= size:
            return images
        return images[np.sort(np.random.default_rng(seed).choice(len(images), size, replace=False))]
    # The folder's dataset is shuffled (seeded) on every pass: its first elements are a random subset. They are
    # copied batch by batch into one array (no second copy of the whole subset).
    count = min(size, images.count)
    chosen = np.empty((count, *images.image_size, 3), np.uint8)
    labels = None if images.labels is None else np.empty(count, np.int64)
    filled = 0
    for batch in images.dataset.take(count).batch(64):
        batch_images = batch if labels is None else batch[0]
        chosen[filled : filled + len(batch_images)] = batch_images.numpy()
        if labels is not None:
            labels[filled : filled + len(batch_images)] = batch[1].numpy()
        filled += len(batch_images)
    return chosen if labels is None else (chosen, labels)


def outputs(classifier, images, limit=None, batch_size=256):
    """``(outputs, labels)`` of ``classifier`` on a folder, a dataset (labels ``None`` when unlabeled) or an array,
    computed batch by batch: only the ``(N, classes)`` outputs are kept, never the images."""
    import numpy as np

    if isinstance(images, np.ndarray):
        # A seeded random subset, as a folder's shuffled dataset gives: arrays are often sorted by class, and
        # their first images would be read as the target's class mix.
        chosen = images if limit is None else sample(images, limit)
        return np.asarray(classifier.predict(chosen, batch_size=batch_size, verbose=0)), None
    dataset = getattr(images, "dataset", images)
    if limit is not None:
        dataset = dataset.take(limit)
    results, labels = [], []
    for batch in dataset.batch(batch_size):
        if isinstance(batch, tuple):
            batch, batch_labels = batch[0], batch[1]
            labels.append(batch_labels.numpy())
        results.append(np.asarray(classifier.predict_on_batch(batch)))
    return np.concatenate(results), (np.concatenate(labels).astype(np.int64) if labels else None)


def accuracy(classifier, images, batch_size=256):
    """Accuracy of ``classifier`` on a labeled folder or an unbatched dataset of ``(image, label)``, streamed."""
    import numpy as np

    predicted, labels = outputs(classifier, images, batch_size=batch_size)
    return float(np.mean(np.argmax(predicted, axis=-1) == labels))


# --- gap ---------------------------------------------------------------------------------------------------------------

def shift_verdict(p_value, permutations, level=0.05):
    """``"shift detected, p < 0.001"`` / ``"no significant shift, p = 0.4"`` from an MMD permutation test."""
    smallest = 1.0 / (1 + permutations)
    if p_value <= smallest and smallest < 0.001:
        text = "p < 0.001"
    elif p_value <= smallest:
        text = f"p <= {smallest:.2g} (the smallest {permutations} permutations can show)"
    else:
        text = f"p = {p_value:.2g}"
    return f"shift detected, {text}" if p_value < level else f"no significant shift, {text}"


def _gap(args):
    if args.plot:  # the plot is a PNG (GapReport.plot's rule; the CLI imports only public modules): checked now
        suffix = Path(args.plot).suffix
        if suffix.lower() not in ("", ".png"):
            raise CommandError(f"--plot {args.plot}: the plot is a PNG; give a path ending in .png (or none).")
        args.plot = args.plot if suffix else f"{args.plot}.png"
    # Folders are scanned and checked before TensorFlow is imported: a wrong path fails at once.
    (source, source_skipped), (target, target_skipped) = (open_unlabeled(args.source, args, args.max_images, 0),
                                                          open_unlabeled(args.target, args, args.max_images, 1))
    # proxy-A-distance and the domain classifier hold out half of each domain: da.gap.measure needs 4 per domain
    why = " (the gap's domain classifier holds out half of each folder)"
    _at_least(source, args.source, 4, why), _at_least(target, args.target, 4, why)
    if image_shape(source) != image_shape(target):
        raise CommandError(f"source images are {image_shape(source)} but target images are {image_shape(target)}: "
                           "folders are resized to --image-size, .npy/.npz arrays are not.")
    labeled_source = None
    if args.classifier:
        _existing_file(args.classifier, "--classifier")
        labeled_source, _ = open_labeled(args.source, args, args.max_images)
    outputs_given = [(flag, path) for flag, path in (("--json", args.json), ("--plot", args.plot),
                                                      ("--export-label-shift", args.export_label_shift)) if path]
    seen = {}
    for flag, path in outputs_given:  # refused before any work, never overwritten
        resolved = Path(path).resolve()
        if resolved in seen:
            raise CommandError(f"{seen[resolved]} and {flag} name the same file ({path}): give each its own path.")
        seen[resolved] = flag
        _writable(path, args.overwrite)
    _quiet_tensorflow(args.verbose)
    import keras

    import domadapt as da

    _report_skipped([*source_skipped, *target_skipped], f"{args.source} and {args.target}")
    if args.backbone == "pixels":
        # The images area-pooled to at most 8 x 8 (the gap report's input row), flattened: what the shift test
        # then compares. (The raw images would be average-pooled to their channel means: a spatial change,
        # such as a mirrored brightness ramp, would go unseen.)
        height, width, _ = shape = image_shape(source)
        inputs = keras.Input(shape)
        pooled = keras.layers.Resizing(min(8, height), min(8, width), interpolation="area")(inputs)
        backbone = keras.Model(inputs, keras.layers.Flatten()(pooled), name="pixels")
        layers = "output"
    else:
        backbone, _ = _load_run_backbone(args, image_shape(source))
        _check_backbone_takes(backbone, image_shape(source), args)
        layers = args.layers
    num_source, num_target = image_count(source), image_count(target)
    # The layer profile holds every layer's activations: it is measured on a bounded random subset.
    profile_source, profile_target = sample(source, args.max_samples, 0), sample(target, args.max_samples, 1)
    _check_same_scale({args.source: profile_source, args.target: profile_target})
    whole = len(profile_source) == num_source and len(profile_target) == num_target
    print(f"Extracting features of {num_source} source and {num_target} target images with {backbone.name}"
          + ("" if whole else f" (layer profile on a random {args.max_samples} per domain)") + " ...")
    progress = 1 if sys.stdout.isatty() else 0
    report = da.gap.measure(backbone, profile_source, profile_target, layers=layers, metrics=args.metrics,
                            max_samples=args.max_samples, verbose=progress)
    # The shift test on the output features of every image, computed batch by batch (features are small).
    features = ((profile_source, profile_target) if whole else (stream(source), stream(target)))
    source_features, target_features = da.gap.features(backbone, *features, verbose=progress)
    test = da.gap.mmd_test(source_features, target_features, permutations=args.permutations)
    verdict = shift_verdict(test.p_value, args.permutations)
    print(report)
    tested = ("" if (test.num_source, test.num_target) == (len(source_features), len(target_features))
              else f", on a random {test.num_source} source and {test.num_target} target images")
    print(f"MMD permutation test on the output features ({args.permutations} permutations{tested}): {verdict}")
    shift = None
    if labeled_source is not None:
        shift = estimate_label_shift(_load_classifier(args.classifier, labeled_source.class_names), labeled_source,
                                     target, labeled_source.class_names, args.export_label_shift, args.overwrite)
    if args.json:
        table = report.to_dict()
        table.update(verdict=verdict, mmd_test={"statistic": float(test.statistic), "p_value": float(test.p_value),
                                                "permutations": args.permutations, "num_source": test.num_source,
                                                "num_target": test.num_target},
                     skipped={"source": len(source_skipped), "target": len(target_skipped)})
        if shift is not None:
            table["label_shift"] = shift.to_dict()
        print(f"Wrote {write_json(_writable(args.json, args.overwrite), table)}")
    if args.plot:
        path = _writable(args.plot, args.overwrite)
        write_atomically(path, lambda temporary: report.plot(temporary, overwrite=True))
        print(f"Wrote {path}")
    return 0


def _writable(path, overwrite):
    path = Path(path)
    if path.is_dir():  # before the --overwrite advice: a folder is never replaced
        raise CommandError(f"{path} is a folder; expected a file path.")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it.")
    return path


# --- label shift ---------------------------------------------------------------------------------------------------------

def _existing_file(path, flag):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path} does not exist.")
    if not path.is_file():
        raise CommandError(f"{flag} {path} is not a file.")
    return path


def _load_classifier(path, class_names=None):
    """A saved Keras classifier (a saved ``da.DomainAdapter`` gives its ``classifier``); with ``class_names``, it
    must output one score per class."""
    import keras

    import domadapt

    domadapt._import_everything()  # noqa: SLF001  registers the classes a saved adapter or classifier may hold
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a file that is not a model
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise CommandError(f"{path} cannot be loaded as a Keras model ({type(error).__name__}: {first}).") from None
    if isinstance(model, domadapt.DomainAdapter):
        model = model.classifier  # what fit exports: the target's batch-norm statistics
    try:
        shape = model.output_shape
    except (AttributeError, ValueError):  # a subclassed model that was never called, a multi-output layer graph
        raise CommandError(f"{path} holds a {type(model).__name__} without one static output shape; save the "
                           "classifier as a functional or Sequential keras.Model.") from None
    if class_names is not None and (not isinstance(shape, tuple) or len(shape) != 2 or shape[-1] != len(class_names)):
        raise CommandError(f"{path} outputs shape {shape}, but the source folder has {len(class_names)} classes "
                           f"{class_names}: expected (None, {len(class_names)}).")
    return model


def estimate_label_shift(classifier, source, target, class_names, export=None, overwrite=False, note="",
                         source_outputs=None):
    """Print the estimated target class mix (``da.gap.label_shift``, BBSE) and a verdict; write it to ``export``.

    ``source``: a labeled folder (or pass ``source_outputs``, the classifier's ``(outputs, labels)`` on it, when
    already computed). The classifier runs batch by batch over every source image and a random
    ``LABEL_SHIFT_IMAGES`` target images; only its outputs are kept, so memory does not grow with the folders.
    """
    import re

    import keras

    import domadapt as da

    expected = tuple(classifier.input_shape[1:])
    if len(expected) != 3 or any(e is not None and e != a for e, a in zip(expected, image_shape(target))):
        raise CommandError(f"the classifier takes images of shape {expected}, but the folders' images are "
                           f"{image_shape(target)} (set --image-size).")
    if source_outputs is None:
        source_outputs = outputs(classifier, source)
    target_outputs, _ = outputs(classifier, target, limit=LABEL_SHIFT_IMAGES)
    # da.gap.label_shift reads the classifier's outputs through `predict`: an identity model hands it the
    # outputs computed above (it turns logits into probabilities itself).
    identity = keras.Sequential([keras.Input((target_outputs.shape[1],)), keras.layers.Identity()])
    result = da.gap.label_shift(identity, source=source_outputs, target=target_outputs)
    names = list(class_names)
    verdict = re.sub(r"class (\d+) ~", lambda match: f"{names[int(match.group(1))]} ~", result.verdict)
    mix = ", ".join(f"{name} {q:.2f}" for name, q in zip(names, result.target_proportions))
    print(f"Estimated target class mix ({result.num_target} target images, {result.method}{note}): {mix}")
    if result.differs:
        print(f"warning: {verdict}. Alignment without class weights can pull target images onto classes the target "
              "lacks; consider class_weights= (da.gap.label_shift(...).importance_weights) or a prior correction.")
    elif result.inconclusive:
        print(f"Label shift: {verdict}\n  why: {result.reason}")
    else:
        print(f"Label shift: {verdict}")
    if export:
        table = dict(result.to_dict(), class_names=names, verdict=verdict)
        print(f"Wrote {write_json(_writable(export, overwrite), table)}")
    return result


# --- recipes -------------------------------------------------------------------------------------------------------------

def built_in_recipes():
    """``{name: first line of its docstring}`` of the recipes shipped in ``domadapt.recipes``."""
    names = sorted(entry.name[:-3] for entry in resources.files(_BUILT_IN).iterdir()
                   if entry.name.endswith(".py") and not entry.name.startswith("_"))
    return {name: (importlib.import_module(f"{_BUILT_IN}.{name}").__doc__ or "").strip().split("\n")[0]
            for name in names}


def find_recipe(name_or_path):
    """Where a recipe is, without importing it: a ``Path`` (a ``.py`` file) or a built-in recipe's name."""
    name = str(name_or_path)
    path = Path(name) if name.endswith(".py") else Path.cwd() / "recipes" / f"{name}.py"
    if path.is_file():
        return path
    if name.isidentifier() and resources.files(_BUILT_IN).joinpath(f"{name}.py").is_file():
        return name
    built_in = sorted(entry.name[:-3] for entry in resources.files(_BUILT_IN).iterdir()
                      if entry.name.endswith(".py") and not entry.name.startswith("_"))
    searched = [str(path)] + ([] if name.endswith(".py") else [f"built-in recipes {built_in}"])
    raise FileNotFoundError(f"Recipe {name_or_path!r} not found (looked in {', '.join(searched)}).")


def load_recipe(name_or_path):
    """A recipe module from a ``.py`` path, or by name: ``./recipes/NAME.py`` first, then the built-in one."""
    import importlib.util

    location = find_recipe(name_or_path)
    if isinstance(location, Path):
        spec = importlib.util.spec_from_file_location(f"domadapt_recipe_{location.stem}", location)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return _checked(module, location)
    return _checked(importlib.import_module(f"{_BUILT_IN}.{location}"), location)


def _checked(module, where):
    if not callable(getattr(module, "recipe", None)):
        raise ValueError(f"{where} defines no recipe() function returning strategies.")
    return module


# --- run -------------------------------------------------------------------------------------------------------------------

def _load_run_backbone(args, input_shape):
    """``(backbone, pretrained)``: whether its weights were trained (a saved model, ImageNet, a file)."""
    from domadapt.backbones import load_backbone

    if os.path.exists(args.backbone):
        return load_backbone(args.backbone), True
    if args.weights in ("none", "None"):
        return load_backbone(args.backbone, weights=None, input_shape=input_shape), False
    if args.weights != "auto":
        return load_backbone(args.backbone, weights=args.weights, input_shape=input_shape), True
    try:
        return load_backbone(args.backbone, weights="imagenet", input_shape=input_shape), True
    except RuntimeError as error:
        print(f"warning: {error} Using a randomly initialised backbone instead.", file=sys.stderr)
        return load_backbone(args.backbone, weights=None, input_shape=input_shape), False


def _add_run_arguments(parser):
    parser.add_argument("--source", required=True, help="labeled source images: one sub-folder per class")
    parser.add_argument("--target", required=True, help="unlabeled target images: a folder (searched recursively)")
    parser.add_argument("--target-labeled", help="a few labeled target images: one sub-folder per class")
    parser.add_argument("--eval", metavar="DIR",
                        help="labeled target images (one sub-folder per class) to measure target accuracy on; "
                             "also trains a source-only model for comparison, which doubles the training time")
    parser.add_argument("--backbone", default="mobilenetv3small",
                        help="keras.applications name or path to a .keras model (default mobilenetv3small)")
    parser.add_argument("--weights", default="auto", help="'imagenet', a weights file, 'none', or 'auto'")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=96, help="side images are resized to (default 96)")
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default=None,
                        help="how images of another shape are resized: stretch, crop (centre) or pad")
    parser.add_argument("--max-images", type=int, default=None,
                        help="use at most this many images per folder (per class in labeled folders), a seeded "
                             "random subset; default: all (folders are streamed from disk, not loaded)")
    parser.add_argument("--strict", action="store_true", help="stop with an error if any image cannot be read")
    parser.add_argument("--export-label-shift", metavar="PATH",
                        help="write the estimated target class mix (and the source's) as JSON here")
    parser.add_argument("--out", default="domadapt_run", help="output folder (default domadapt_run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files an earlier run wrote in --out (other files are never touched)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from its last completed epoch")
    parser.add_argument("--tensorboard", metavar="DIR", help="log every loss term and metric per epoch to DIR")
    _add_verbose(parser)


def _add_verbose(parser):
    parser.add_argument("--verbose", action="store_true", help="keep TensorFlow's own log lines")


# Arguments a resumed run must share with the interrupted one.
_RESUME_KEYS = ("recipe", "source", "target", "target_labeled", "eval", "backbone", "weights", "epochs", "batch_size",
                "image_size", "resize", "max_images")


def check_out(args):
    """Refuse, before anything is read or trained, an --out that holds a run without --overwrite/--resume."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; expected a folder (it is created if missing).")
    resume = out / RESUME_FOLDER
    if args.resume:
        if not (resume / "arguments.json").is_file():
            raise CommandError(f"--resume: {out} holds no interrupted run to continue.")
        return
    existing = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if resume.exists():
        existing.append(f"{RESUME_FOLDER} (an interrupted run: pass --resume to continue it)")
    if existing and not args.overwrite:
        raise FileExistsError(f"{out} already holds {existing}; pass --overwrite to replace them.")


def _prepare_out(args, recipe_name):
    """Check --out for --overwrite/--resume, clear what an earlier run of ours left; returns the resume folder."""
    check_out(args)
    out = Path(args.out)
    resume = out / RESUME_FOLDER
    recorded = {key: getattr(args, key, None) for key in _RESUME_KEYS}
    recorded["recipe"] = recipe_name
    if args.resume:
        before = json.loads((resume / "arguments.json").read_text())
        changed = {k: (before.get(k), recorded[k]) for k in _RESUME_KEYS if before.get(k) != recorded[k]}
        if changed:
            raise CommandError("--resume: the arguments differ from the interrupted run's: " + ", ".join(
                f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items()))
    else:
        if resume.exists():
            import shutil

            shutil.rmtree(resume)  # our own backup folder, found by its name
        for name in RUN_OUTPUTS:
            if (out / name).exists():
                (out / name).unlink()
        write_json(resume / "arguments.json", recorded)
    _remove_stale_partials(out, RUN_OUTPUTS)
    return resume


def _check_backbone_takes(backbone, shape, args):
    """A backbone built for other image sizes fails inside a compiled function: say so before anything runs."""
    expected = tuple(backbone.input_shape[1:]) if len(backbone.input_shape) == 4 else None
    if expected is None or any(e is not None and e != s for e, s in zip(expected, shape)):
        size = "" if expected is None or expected[0] is None else f"; pass --image-size {expected[0]}"
        raise CommandError(f"the backbone {args.backbone} takes images of shape {expected}, but the images are read "
                           f"at {tuple(shape)}{size}.")


def _check_same_scale(samples):
    from domadapt.data import scale_mismatch

    mismatch = scale_mismatch(samples)
    if mismatch:
        raise CommandError(mismatch)


def _source_only_copy(backbone):
    """A copy of the backbone with its current weights, for the source-only baseline."""
    import keras

    copy = keras.models.clone_model(backbone)
    copy.set_weights(backbone.get_weights())
    return copy


def _completed_epochs(backup):
    """Epochs a keras.callbacks.BackupAndRestore folder holds (0 if none)."""
    try:
        return int(json.loads((Path(backup) / "training_metadata.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _callbacks(args, resume, name):
    import keras

    import domadapt as da

    # domadapt's BackupAndRestore: its metadata file survives a kill mid-write (Keras' can be left empty).
    callbacks = [da.callbacks.BackupAndRestore(str(resume / name), delete_checkpoint=False, double_checkpoint=True)]
    if args.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(Path(args.tensorboard) / name)))
    return callbacks


def _run(args, recipe_module=None):
    """``domadapt run``: ``recipe_module`` (default: ``load_recipe(args.recipe)``) trained on the folders of ``args``."""
    import inspect
    import shutil

    check_out(args)
    if recipe_module is None:
        find_recipe(args.recipe)  # a misspelt recipe fails before the folders are read
    if args.export_label_shift:
        _writable(args.export_label_shift, args.overwrite)
    out = Path(args.out)
    # Folders are scanned and checked (not loaded) before TensorFlow is imported: a wrong path fails at once.
    source, source_skipped = open_labeled(args.source, args, args.max_images)
    classes = source.class_names
    if len(classes) < 2:
        raise CommandError(f"{args.source} holds one class folder ({classes[0]!r}); a classifier needs at least two "
                           "classes, one sub-folder each.")
    target, target_skipped = open_unlabeled(args.target, args, args.max_images, seed=1)
    _at_least(target, args.target)
    if image_shape(target) != image_shape(source):
        raise CommandError(f"source images are {image_shape(source)} but target images are {image_shape(target)} "
                           f"({args.target}).")
    labeled, labeled_skipped = None, []
    if args.target_labeled:
        labeled, labeled_skipped = open_labeled(args.target_labeled, args, args.max_images, classes, seed=2)
    evaluation, eval_skipped = None, []
    if args.eval:
        evaluation, eval_skipped = open_labeled(args.eval, args, args.max_images, classes, seed=3)
    _quiet_tensorflow(args.verbose)
    import keras
    import numpy as np
    import tensorflow as tf

    import domadapt as da

    recipe_module = recipe_module or load_recipe(args.recipe)
    recipe_name = getattr(recipe_module, "__file__", None) or recipe_module.__name__
    task = getattr(recipe_module, "task", "classification")
    if task != "classification":
        raise CommandError(f"recipe {args.recipe!r} trains {task} models, and `domadapt run` trains classifiers "
                           "from class folders; use the recipe from Python (see its docstring).")
    # Everything that can be refused is checked before --out is touched.
    backbone, pretrained = _load_run_backbone(args, image_shape(source))
    _check_backbone_takes(backbone, image_shape(source), args)
    # The gap is measured on one fixed random subset of each domain, before and after; it also shows a scale mismatch.
    size = min(GAP_IMAGES, source.count, image_count(target))
    gap_source, gap_target = sample(source, size, 0)[0], sample(target, size, 1)
    _check_same_scale({args.source: gap_source, args.target: gap_target})
    resume = _prepare_out(args, recipe_name)
    if args.resume:
        print(f"Resuming the run in {out} from its last completed epoch "
              f"({_completed_epochs(resume / 'adapted')} of {args.epochs} adapted"
              + (f", {_completed_epochs(resume / 'source_only')} source-only)" if args.eval else ")"))
    listed = {"source": (source, source_skipped), "target": (target, target_skipped),
              "target_labeled": (labeled, labeled_skipped), "eval": (evaluation, eval_skipped)}

    def skipped_of(name):  # a streamed folder adds the files that fail only while it is read
        images, at_start = listed[name]
        return _as_pairs(images.skipped) if hasattr(images, "skipped") else at_start

    def all_skipped():
        return [item for name in listed for item in skipped_of(name)]

    skipped = all_skipped()
    if skipped:
        write_atomically(out / "skipped.txt", lambda temporary: temporary.write_text(_skipped_text(skipped)))
        _report_skipped(skipped, "the input folders", out)
    print(f"{source.count} source images in {len(classes)} classes, {image_count(target)} target images"
          + (f", {labeled.count} labeled target images" if labeled is not None else "")
          + (f", {evaluation.count} evaluation images" if evaluation is not None else ""))
    baseline_backbone = _source_only_copy(backbone) if evaluation is not None else None

    def gap(model):  # uint8 batches, cast one at a time (a float32 copy of the whole sample would be 4x its size)
        batches = [tf.data.Dataset.from_tensor_slices(images).batch(64) for images in (gap_source, gap_target)]
        features = da.gap.features(model, *batches, verbose=0)
        return {"mmd": da.gap.mmd(*features), "frechet": da.gap.frechet(*features),
                "proxy_a_distance": da.gap.proxy_a_distance(*features)}

    before = gap(backbone)
    offered = {"target_images": gap_target, "source_images": gap_source, "pretrained": pretrained}
    accepted = inspect.signature(recipe_module.recipe).parameters
    strategies = recipe_module.recipe(**{k: v for k, v in offered.items() if k in accepted})
    adapter = da.DomainAdapter(backbone, num_classes=len(classes), strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    verbose = progress_verbosity()
    # Folders reshuffle their file order every pass; the decoded-image shuffle buffer only mixes batches further,
    # so it stays small: memory does not grow with the folder.
    streams = {"batch_size": args.batch_size, "shuffle_buffer": SHUFFLE_BUFFER, "verbose": verbose}
    history = adapter.fit(source=stream(source), target=stream(target),
                          target_labeled=None if labeled is None else stream(labeled), epochs=args.epochs,
                          callbacks=_callbacks(args, resume, "adapted"), **streams)
    after = gap(adapter)
    source_outputs = outputs(adapter.classifier, source)  # one pass: the source accuracy and the label-shift estimate
    accuracies = {"source": {"adapted": float(np.mean(np.argmax(source_outputs[0], axis=-1) == source_outputs[1]))}}
    baseline = None
    if evaluation is not None:
        print(f"Training the source-only baseline ({args.epochs} epochs) ...")
        baseline = da.DomainAdapter(baseline_backbone, num_classes=len(classes), strategies=[])
        baseline.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
        baseline.fit(source=stream(source), epochs=args.epochs, callbacks=_callbacks(args, resume, "source_only"),
                     **streams)
        accuracies["source"]["source_only"] = accuracy(baseline.classifier, source)
        accuracies["target"] = {"adapted": accuracy(adapter.classifier, evaluation),
                                "source_only": accuracy(baseline.classifier, evaluation)}
    chance = 1.0 / len(classes)
    learned = accuracies["source"]["adapted"] >= chance + 0.2 * (1 - chance)
    if not learned:
        print(
            f"warning: training did not learn: source accuracy {accuracies['source']['adapted']:.1%} is near chance "
            f"({chance:.1%} for {len(classes)} classes). Train longer (--epochs), use pretrained weights "
            "(--weights imagenet or a weights file), or check that the source folders hold the right classes.",
            file=sys.stderr)
    write_atomically(out / "classifier.keras", lambda temporary: adapter.classifier.save(temporary))
    if baseline is not None:
        write_atomically(out / "source_only.keras", lambda temporary: baseline.classifier.save(temporary))
    try:  # after the classifier is saved: an estimate that cannot be made never costs the trained model
        shift = estimate_label_shift(adapter.classifier, source, target, classes, args.export_label_shift,
                                     args.overwrite, source_outputs=source_outputs,
                                     note="; the source images were used for training, so read it as approximate")
    except (ValueError, CommandError) as error:
        shift = None
        print(f"warning: the target's class mix was not estimated: {_one_line(error)}", file=sys.stderr)
    final_skipped = all_skipped()
    if len(final_skipped) != len(skipped):
        write_atomically(out / "skipped.txt", lambda temporary: temporary.write_text(_skipped_text(final_skipped)))
        _report_skipped(final_skipped[len(skipped):], "the input folders while training", out)
    summary = {
        "recipe": recipe_name, "strategies": [type(s).__name__ for s in adapter.strategies],
        "classes": classes, "backbone": args.backbone, "epochs": args.epochs,
        "data": {"source": str(Path(args.source).resolve()), "target": str(Path(args.target).resolve()),
                 "eval": str(Path(args.eval).resolve()) if args.eval else None, "image_size": args.image_size,
                 "resize": args.resize, "max_images": args.max_images,
                 "num_images": {"source": source.count, "target": image_count(target),
                                "target_labeled": 0 if labeled is None else labeled.count,
                                "eval": 0 if evaluation is None else evaluation.count}},
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "gap_before": before, "gap_after": after, "accuracy": accuracies, "learned": learned,
        "label_shift": None if shift is None else dict(shift.to_dict(), class_names=classes, approximate=True),
        "skipped": {"count": len(final_skipped), **{name: len(skipped_of(name)) for name in listed}},
    }
    write_json(out / "summary.json", summary)
    import importlib.util

    picture = None
    if importlib.util.find_spec("matplotlib") is not None:
        picture = write_atomically(out / "training.png", lambda temporary: _plot_run(summary, temporary))
    shutil.rmtree(resume, ignore_errors=True)  # the run is complete: its backups are ours to remove
    print("gap before -> after: " + ", ".join(f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in before))
    line = f"source accuracy {accuracies['source']['adapted']:.1%}"
    if evaluation is not None:
        target_accuracy = accuracies["target"]
        line += (f"; target accuracy: adapted {target_accuracy['adapted']:.1%}, source-only "
                 f"{target_accuracy['source_only']:.1%} ({target_accuracy['adapted'] - target_accuracy['source_only']:+.1%})")
    print(line)
    print(f"Wrote {out / 'classifier.keras'}, {out / 'summary.json'}"
          + (f", {picture}" if picture else " (no training.png: pip install matplotlib)"))
    return 0


def _plot_run(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = summary["accuracy"].get("target")
    figure, axes = plt.subplots(1, 3 if target else 2, figsize=(15 if target else 11, 4), layout="constrained")
    curves, bars = axes[0], axes[1]
    for name, values in summary["history"].items():
        if name.endswith("loss") or name.endswith("acc") or name == "accuracy":
            curves.plot(range(1, len(values) + 1), values, marker="o", label=name)
    curves.set_xlabel("epoch")
    curves.set_title("training")
    curves.legend(fontsize=8)
    metrics = list(summary["gap_before"])
    positions = range(len(metrics))
    before = [summary["gap_before"][m] for m in metrics]
    after = [summary["gap_after"][m] for m in metrics]
    scale = [max(abs(b), abs(a), 1e-12) for b, a in zip(before, after)]
    bars.bar([p - 0.2 for p in positions], [b / s for b, s in zip(before, scale)], width=0.4, label="before")
    bars.bar([p + 0.2 for p in positions], [a / s for a, s in zip(after, scale)], width=0.4, label="after")
    bars.set_xticks(list(positions), metrics)
    bars.set_title("domain gap on backbone features (scaled to the larger)")
    bars.legend()
    if target:
        names = ["source_only", "adapted"]
        axes[2].bar(names, [target[n] for n in names], color=["tab:gray", "tab:blue"])
        for i, name in enumerate(names):
            axes[2].text(i, target[name], f"{target[name]:.1%}", ha="center", va="bottom")
        axes[2].set_ylim(0, 1.05)
        axes[2].set_title("target accuracy (--eval)")
    figure.savefig(path, dpi=100, format="png")
    plt.close(figure)
    return path


# --- compare ---------------------------------------------------------------------------------------------------------------

def _compare(args):
    runs = {}
    summaries = {}
    for folder in args.runs:
        folder = Path(folder)
        if not (folder / "classifier.keras").is_file():
            raise CommandError(f"{folder} holds no classifier.keras (expected a folder written by `domadapt run`).")
        name = folder.resolve().name
        while name in runs:
            name += "'"
        runs[name] = folder
        summary_path = folder / "summary.json"
        try:
            summaries[name] = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        except ValueError as error:
            raise CommandError(f"{summary_path} is not valid JSON ({error}).") from None
    recorded = [s.get("data") or {} for s in summaries.values()]

    def chosen(key, given):
        if given is not None:
            return given
        values = {r.get(key) for r in recorded}
        if len(values) != 1 or None in values:
            raise CommandError(f"the runs do not record one common {key} ({sorted(map(str, values))}); "
                               f"pass --{key.replace('_', '-')}.")
        return values.pop()

    args.image_size = chosen("image_size", args.image_size)
    source_path, target_path = chosen("source", args.source), chosen("target", args.target)
    if args.resize is None:
        resizes = {r.get("resize") for r in recorded}
        if len(resizes - {None}) > 1:  # runs that record none used the default
            raise CommandError(f"the runs do not record one common resize ({sorted(map(str, resizes))}); pass --resize.")
        args.resize = (resizes - {None}).pop() if resizes - {None} else None
    if args.json:
        _writable(args.json, args.overwrite)
    source, source_skipped = open_labeled(source_path, args, None)
    target, target_skipped = open_unlabeled(target_path, args, None, seed=1)
    classes = source.class_names
    _report_skipped([*source_skipped, *target_skipped], f"{source_path} and {target_path}")
    _quiet_tensorflow(args.verbose)
    import domadapt as da

    for name, summary in summaries.items():
        if summary.get("classes") not in (None, classes):
            raise CommandError(f"run {name} was trained on classes {summary['classes']}, but {source_path} holds {classes}.")
    models = {name: _load_classifier(folder / "classifier.keras", classes) for name, folder in runs.items()}
    # The validators hold the images (and 'reverse' trains on them): a bounded random subset of each folder.
    scored = args.max_images or COMPARE_IMAGES
    (source_x, source_y), target_x = sample(source, scored, 0), sample(target, scored, 1)
    _check_same_scale({source_path: source_x, target_path: target_x})  # a .npy target in [0, 1], a folder in [0, 255]
    for name, model in models.items():
        expected = tuple(model.input_shape[1:])
        if len(expected) != 3 or any(e is not None and e != a for e, a in zip(expected, source_x.shape[1:])):
            raise CommandError(f"run {name}'s classifier takes images of shape {expected}, but the folders are read at "
                               f"{source_x.shape[1:]} (pass --image-size).")
    print(f"Scoring {len(models)} runs on {len(source_x)} source images ({source_path}) and "
          f"{len(target_x)} target images ({target_path})"
          + (f", random subsets of {source.count} and {image_count(target)}" if len(source_x) < source.count
             or len(target_x) < image_count(target) else "") + " ...")
    table = da.compare(models, source=(source_x, source_y), target=target_x, validators=args.validators)
    print(table)
    if args.json:
        print(f"Wrote {write_json(_writable(args.json, args.overwrite), table.to_dict())}")
    return 0


# --- entry points --------------------------------------------------------------------------------------------------------

def _quiet_tensorflow(verbose):
    """Keep TensorFlow's C++ start-up lines (oneDNN, CUDA drivers) out of the output; runs before its first import.

    TF_CPP_MIN_LOG_LEVEL silences TensorFlow's own C++ logging, but TF 2.21 writes its
    start-up lines through absl before reading it: those are silenced by importing
    TensorFlow, and letting it look for devices, with the process's stderr (file
    descriptor 2) sent to /dev/null meanwhile. Python errors are unaffected.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# OSError: a path that cannot be written (permissions, a full disk, a file where a folder is expected).
_INPUT_ERRORS = (CommandError, ValueError, TypeError, OSError, RuntimeError, ImportError)


def _one_line(error):
    """An error as one line (a listing of skipped files is joined with '; ')."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _is_tensorflow_error(error):
    return type(error).__module__.startswith("tensorflow")


def _answer(command, call, verbose=False):
    """``call()``; an input mistake, or an error raised inside a TensorFlow pipeline, becomes one line and exit code 2.

    Other errors (bugs) keep their traceback; with --verbose, TensorFlow's errors do too.
    """
    try:
        return call()
    except _INPUT_ERRORS as error:
        line = _one_line(error)
    except Exception as error:
        if verbose or not _is_tensorflow_error(error):
            raise
        line = _tensorflow_error_line(error)
    print(f"{command}: error: {line}", file=sys.stderr)
    return 2


def _tensorflow_error_line(error):
    """One line for an error raised inside a tf.data pipeline or a compiled step (the Python error it wraps, if any)."""
    message = str(getattr(error, "message", error))
    for line in message.splitlines():
        for kind in ("ValueError", "OSError", "FileNotFoundError", "PermissionError"):
            if f"{kind}: " in line:
                return f"while reading the images: {line.split(f'{kind}: ', 1)[1].strip()}"
    first = (message.strip().splitlines() or [""])[0][:300]
    return f"TensorFlow stopped with {type(error).__name__}: {first} (pass --verbose to see where)"


def recipe_main(recipe_path, argv=None):
    """Command line of a recipe file: ``python recipes/NAME.py --source DIR --target DIR ...``."""
    recipe = load_recipe(recipe_path)
    parser = argparse.ArgumentParser(prog=f"python {recipe_path}", description=(recipe.__doc__ or "").split("\n\n")[0])
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    _check_run_arguments(parser, args)
    sys.exit(_answer(f"python {recipe_path}", lambda: _run(args, recipe), args.verbose))


def _check_run_arguments(parser, args):
    if args.image_size < 8:
        parser.error("--image-size must be >= 8")
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    if args.max_images is not None and args.max_images < 1:
        parser.error("--max-images must be >= 1")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out; --overwrite starts a new one: pass only one")
    if args.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            parser.error("--tensorboard needs the tensorboard package: pip install 'domadapt[tensorboard]'")


def build_parser():
    """The ``domadapt`` argument parser (built without importing TensorFlow)."""
    parser = argparse.ArgumentParser(prog="domadapt", description="Domain adaptation for Keras models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gap_parser = commands.add_parser("gap", help="measure the gap between two image sets and test for a shift",
                                     description="Measure the domain gap between two image sets, per layer, and test "
                                                 "whether they differ (MMD permutation test on the output features).")
    gap_parser.add_argument("source", help="folder of images (searched recursively), .npy or .npz")
    gap_parser.add_argument("target", help="folder of images (searched recursively), .npy or .npz")
    gap_parser.add_argument("--backbone", default="mobilenetv3small",
                            help="keras.applications name, path to a .keras model, or 'pixels' (default mobilenetv3small)")
    gap_parser.add_argument("--weights", default="auto",
                            help="'imagenet', a local weights file, 'none', or 'auto' (ImageNet when available)")
    gap_parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_GAP_METRICS), choices=GAP_METRICS)
    gap_parser.add_argument("--layers", default="auto", choices=["auto", "output"])
    gap_parser.add_argument("--image-size", type=int, default=96, help="side images are resized to (folders only)")
    gap_parser.add_argument("--resize", choices=RESIZE_POLICIES, default=None,
                            help="how images of another shape are resized: stretch, crop (centre) or pad")
    gap_parser.add_argument("--max-images", type=int, default=None,
                            help="use at most this many images per folder, a seeded random subset; default: all "
                                 "(streamed from disk; features of every image are extracted, and the shift test "
                                 "runs on a seeded random 2000 of them per domain)")
    gap_parser.add_argument("--max-samples", type=int, default=1000,
                            help="images per domain, a random subset, for the per-layer table (default 1000)")
    gap_parser.add_argument("--classifier", metavar="PATH",
                            help="a trained classifier (.keras, e.g. a run's classifier.keras): SOURCE is then read "
                                 "as labeled (one sub-folder per class, images the classifier was not trained on) "
                                 "and the target's class mix is estimated")
    gap_parser.add_argument("--export-label-shift", metavar="PATH",
                            help="with --classifier: write the estimated class mix as JSON here")
    gap_parser.add_argument("--permutations", type=int, default=1000,
                            help="permutations of the MMD shift test (default 1000: p down to 0.001)")
    gap_parser.add_argument("--strict", action="store_true", help="stop with an error if any image cannot be read")
    gap_parser.add_argument("--json", help="write the table, the test and the verdict as JSON here")
    gap_parser.add_argument("--plot", help="write the profile plot (PNG) here (.png is added to a path without suffix)")
    gap_parser.add_argument("--overwrite", action="store_true",
                            help="replace existing --json/--plot/--export-label-shift files")
    _add_verbose(gap_parser)
    run_parser = commands.add_parser("run", help="run a recipe on image folders",
                                     description="Train a recipe on image folders and write the classifier, "
                                                 "a JSON summary and a plot to --out.")
    run_parser.add_argument("recipe", help="a recipe name (built-in: see `domadapt recipes`; ./recipes/NAME.py first) "
                                           "or a path to a .py file")
    _add_run_arguments(run_parser)
    compare_parser = commands.add_parser(
        "compare", help="rank several runs with the unsupervised validators",
        description="Score the classifiers of several `domadapt run` folders with the validators on the same "
                    "source and target images (by default the folders recorded in their summary.json), and "
                    "recommend one.")
    compare_parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by `domadapt run`")
    compare_parser.add_argument("--source", help="labeled source folder (default: the one the runs recorded)")
    compare_parser.add_argument("--target", help="unlabeled target folder (default: the one the runs recorded)")
    compare_parser.add_argument("--image-size", type=int, default=None, help="default: the runs' image size")
    compare_parser.add_argument("--resize", choices=RESIZE_POLICIES, default=None)
    compare_parser.add_argument("--max-images", type=int, default=None,
                                help=f"images scored per folder, a seeded random subset (default {COMPARE_IMAGES}: "
                                     "the validators hold them in memory)")
    compare_parser.add_argument("--strict", action="store_true", help="stop with an error if any image cannot be read")
    compare_parser.add_argument("--validators", nargs="+", default=list(COMPARE_VALIDATORS),
                                help="validators to score with (default: all of da.validators' defaults; "
                                     "'reverse' trains a model per run and is the slowest)")
    compare_parser.add_argument("--json", help="write the table and the recommendation as JSON here")
    compare_parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _add_verbose(compare_parser)
    commands.add_parser("recipes", help="list the built-in recipes", description="List the built-in recipes.")
    commands.add_parser("demo", help="run the offline sunny-to-rainy demo (options: domadapt demo --help)",
                        add_help=False)
    # Its arguments live beside the code (domadapt.test_time, which imports TensorFlow): parsed there.
    commands.add_parser("adapt-at-test-time", add_help=False,
                        help="adapt a saved classifier to unlabeled target images without source data "
                             "(options: domadapt adapt-at-test-time --help)")
    return parser


def _adapt_at_test_time(argv):
    _quiet_tensorflow("--verbose" in argv)
    from domadapt import test_time

    parser = argparse.ArgumentParser(prog="domadapt adapt-at-test-time",
                                     description="Adapt a saved classifier to unlabeled target images, without "
                                                 "source data, and write it to --out.")
    test_time.add_arguments(parser)
    parser.add_argument("--resize", choices=RESIZE_POLICIES, default="stretch",
                        help="how images of another shape are resized: stretch, crop (centre) or pad")
    parser.add_argument("--strict", action="store_true", help="stop with an error if any image cannot be read")
    _add_verbose(parser)
    args = parser.parse_args(argv)
    for flag in ("epochs", "batch_size", "max_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    return _answer("domadapt adapt-at-test-time", lambda: adapt_at_test_time(args), args.verbose)


def adapt_at_test_time(args):
    """``domadapt adapt-at-test-time``: the target folder streamed; the adapted classifier and a summary to --out."""
    import numpy as np

    import domadapt as da
    from domadapt import ops, test_time
    from domadapt.validators.compare import collapse_reason

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; expected a folder (it is created if missing).")
    existing = [name for name in ("classifier.keras", "summary.json") if (out / name).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{out} already holds {existing}; pass --overwrite to replace them.")
    model = _load_classifier(_existing_file(args.classifier, "classifier"))
    shape = model.input_shape
    if not isinstance(shape, tuple) or len(shape) != 4 or None in shape[1:3]:
        raise CommandError(f"{args.classifier} takes inputs of shape {shape}; expected images (None, height, width, "
                           "channels) of a fixed size.")
    options = {"resize": args.resize, "strict": args.strict}
    size = tuple(shape[1:3])
    channels = shape[3]

    def matched(images):  # folders give RGB: a one-channel model gets their mean
        if channels == 1:
            import tensorflow as tf

            return images.map(lambda image: tf.cast(tf.reduce_mean(tf.cast(image, tf.float32), -1, keepdims=True),
                                                    tf.uint8))
        return images

    from domadapt.folders import image_folder, read_images

    if Path(args.target).is_dir():
        folder = image_folder(args.target, labeled=False, image_size=size, max_images=args.max_images, seed=1,
                              **options)
        _report_skipped(_as_pairs(folder.skipped), args.target)
        target, num_target = matched(folder.dataset), folder.count
    else:
        target = read_images(args.target, size, args.max_images, seed=1, **options)
        if channels == 1 and target.shape[-1] == 3:
            target = target.mean(axis=-1, keepdims=True).astype(target.dtype)
        if tuple(target.shape[1:]) != tuple(shape[1:]):
            raise CommandError(f"{args.target} holds images of shape {target.shape[1:]}; {args.classifier} takes "
                               f"{tuple(shape[1:])}.")
        num_target = len(target)
    evaluation = None
    if args.eval:
        evaluation = image_folder(args.eval, labeled=True, image_size=size, seed=3, **options)
        if len(evaluation.class_names) != model.output_shape[-1]:  # before adapting, not after
            raise CommandError(f"{args.eval} has {len(evaluation.class_names)} class folders but {args.classifier} "
                               f"outputs {model.output_shape[-1]} classes.")
        if not Path(args.target).is_dir():
            # A .npy target in [0, 1] adapted on, then scored on --eval's folder in [0, 255]: the accuracies compare
            # two scales, not before and after. (A target folder is read as --eval is: one scale.)
            _check_same_scale({args.target: target[:256], args.eval: sample(evaluation, 256, 3)[0]})
    print(f"{num_target} target images; adapting {model.name} with {args.method} ...")
    adapted = da.adapt_at_test_time(model, target, method=args.method, epochs=args.epochs, batch_size=args.batch_size)
    summary = {"classifier": str(args.classifier), "target": str(args.target), "method": args.method,
               "epochs": args.epochs if args.epochs is not None else getattr(test_time.METHODS[args.method],
                                                                           "default_epochs", None),
               "batch_size": args.batch_size, "num_target_images": int(num_target)}
    batches = target.batch(256) if hasattr(target, "batch") else target
    for name, candidate in (("before", model), ("after", adapted)):
        probabilities = candidate.predict(batches, verbose=0)
        summary[f"target_mean_entropy_{name}"] = float(np.mean(ops.entropy(probabilities)))
        summary[f"target_collapse_{name}"] = collapse_reason(probabilities)
    if evaluation is not None:
        labeled_images = evaluation.dataset
        if channels == 1:
            import tensorflow as tf

            labeled_images = labeled_images.map(lambda image, label: (
                tf.cast(tf.reduce_mean(tf.cast(image, tf.float32), -1, keepdims=True), tf.uint8), label))
        for name, candidate in (("before", model), ("after", adapted)):
            summary[f"eval_accuracy_{name}"] = accuracy(candidate, labeled_images)
        summary["eval_classes"] = evaluation.class_names
        print(f"accuracy on {args.eval}: {summary['eval_accuracy_before']:.1%} -> {summary['eval_accuracy_after']:.1%}")
    write_atomically(out / "classifier.keras", lambda temporary: adapted.save(temporary))
    write_json(out / "summary.json", summary)
    print(f"Wrote {out / 'classifier.keras'}, {out / 'summary.json'}")
    return 0


def main(argv=None):
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        _quiet_tensorflow(verbose=False)
        from domadapt import demo

        return demo.main(rest)
    if args.command == "adapt-at-test-time":
        return _adapt_at_test_time(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "recipes":
        _quiet_tensorflow(verbose=False)
        for name, summary in built_in_recipes().items():
            print(f"{name:<18} {summary}")
        return 0
    if args.command == "run":
        _check_run_arguments(parser, args)
    elif args.command == "gap":
        if args.image_size < 8:
            parser.error("--image-size must be >= 8")
        if args.max_samples < 4:  # the domain classifier holds out half of each domain
            parser.error("--max-samples must be >= 4")
        if args.max_images is not None and args.max_images < 4:
            parser.error("--max-images must be >= 4")
        if args.permutations < 1:
            parser.error("--permutations must be >= 1")
        if args.export_label_shift and not args.classifier:
            parser.error("--export-label-shift needs --classifier (the label shift is estimated with a classifier)")
    else:
        if args.image_size is not None and args.image_size < 8:
            parser.error("--image-size must be >= 8")
        if args.max_images is not None and args.max_images < 2:
            parser.error("--max-images must be >= 2")
    command = {"run": _run, "compare": _compare, "gap": _gap}[args.command]
    return _answer(f"domadapt {args.command}", lambda: command(args), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
