"""The ``domadapt`` command line: ``domadapt gap``, ``domadapt run``, ``domadapt recipes`` and ``domadapt demo``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from importlib import resources
from pathlib import Path

_BUILT_IN = "domadapt.recipes"


def _gap(args):
    import keras

    from domadapt import gap
    from domadapt.backbones import load_backbone
    from domadapt.datasets import read_images

    size = (args.image_size, args.image_size)
    source = read_images(args.source, size, args.max_samples, seed=0)
    target = read_images(args.target, size, args.max_samples, seed=1)
    if source.shape[1:] != target.shape[1:]:
        raise SystemExit(f"domadapt gap: source images are {source.shape[1:]} but target images are {target.shape[1:]}.")
    if args.backbone == "pixels":
        inputs = keras.Input(source.shape[1:])
        backbone = keras.Model(inputs, keras.layers.Rescaling(1.0)(inputs), name="pixels")
        layers = "output"
    else:
        backbone = load_backbone(args.backbone, weights=args.weights, input_shape=source.shape[1:])
        layers = args.layers
    print(f"Extracting features of {len(source)} source and {len(target)} target images with {backbone.name} ...")
    report = gap.measure(backbone, source, target, layers=layers, metrics=args.metrics,
                         max_samples=args.max_samples, verbose=1)
    print(report)
    if args.json:
        print(f"Wrote {report.to_json(args.json, overwrite=args.overwrite)}")
    if args.plot:
        print(f"Wrote {report.plot(args.plot, overwrite=args.overwrite)}")
    return 0


def built_in_recipes():
    """``{name: first line of its docstring}`` of the recipes shipped in ``domadapt.recipes``."""
    names = sorted(entry.name[:-3] for entry in resources.files(_BUILT_IN).iterdir()
                   if entry.name.endswith(".py") and not entry.name.startswith("_"))
    return {name: (importlib.import_module(f"{_BUILT_IN}.{name}").__doc__ or "").strip().split("\n")[0]
            for name in names}


def load_recipe(name_or_path):
    """A recipe module from a ``.py`` path, or by name: ``./recipes/NAME.py`` first, then the built-in one."""
    import importlib.util

    if str(name_or_path).endswith(".py"):
        candidates = [Path(name_or_path)]
    else:
        candidates = [Path.cwd() / "recipes" / f"{name_or_path}.py"]
    for path in candidates:
        if path.is_file():
            spec = importlib.util.spec_from_file_location(f"domadapt_recipe_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return _checked(module, path)
    name = str(name_or_path)
    if name.isidentifier() and resources.files(_BUILT_IN).joinpath(f"{name}.py").is_file():
        return _checked(importlib.import_module(f"{_BUILT_IN}.{name}"), name)
    searched = [str(c) for c in candidates] + ([] if name.endswith(".py") else [f"built-in recipes {sorted(built_in_recipes())}"])
    raise FileNotFoundError(f"Recipe {name_or_path!r} not found (looked in {', '.join(searched)}).")


def _checked(module, where):
    if not callable(getattr(module, "recipe", None)):
        raise ValueError(f"{where} defines no recipe() function returning strategies.")
    return module


def _load_run_backbone(args, input_shape):
    """``(backbone, pretrained)``: whether its weights were trained (a saved model, ImageNet, a file)."""
    import warnings

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
        warnings.warn(f"{error} Using a randomly initialised backbone instead.", stacklevel=2)
        return load_backbone(args.backbone, weights=None, input_shape=input_shape), False


def _add_run_arguments(parser):
    parser.add_argument("--source", required=True, help="labeled source images: one sub-folder per class")
    parser.add_argument("--target", required=True, help="unlabeled target images: a folder (searched recursively)")
    parser.add_argument("--target-labeled", help="a few labeled target images: one sub-folder per class")
    parser.add_argument("--backbone", default="mobilenetv3small",
                        help="keras.applications name or path to a .keras model (default mobilenetv3small)")
    parser.add_argument("--weights", default="auto", help="'imagenet', a weights file, 'none', or 'auto'")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-images", type=int, default=None, help="images read per folder (random subset)")
    parser.add_argument("--out", default="domadapt_run", help="output folder (default domadapt_run)")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in --out")


def _run(recipe_module, args):
    import inspect
    import json

    import keras

    import domadapt as da
    from domadapt.datasets import read_images, read_labeled_folder

    out = Path(args.out)
    names = ("classifier.keras", "summary.json", "training.png")
    existing = [name for name in names if (out / name).exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{out} already holds {existing}; pass --overwrite to replace them.")
    size = (args.image_size, args.image_size)
    source_x, source_y, classes = read_labeled_folder(args.source, size, args.max_images)
    target_x = read_images(args.target, size, args.max_images, seed=1)
    labeled = None
    if args.target_labeled:
        labeled_x, labeled_y, _ = read_labeled_folder(args.target_labeled, size, args.max_images, class_names=classes)
        labeled = (labeled_x, labeled_y)
    print(f"{len(source_x)} source images in {len(classes)} classes, {len(target_x)} target images"
          + (f", {len(labeled[0])} labeled target images" if labeled else ""))
    backbone, pretrained = _load_run_backbone(args, source_x.shape[1:])

    def gap(model):
        sample = min(500, len(source_x), len(target_x))
        features = da.gap.features(model, source_x[:sample], target_x[:sample], verbose=0)
        return {"mmd": da.gap.mmd(*features), "frechet": da.gap.frechet(*features),
                "proxy_a_distance": da.gap.proxy_a_distance(*features)}

    before = gap(backbone)
    offered = {"target_images": target_x, "source_images": source_x, "pretrained": pretrained}
    accepted = inspect.signature(recipe_module.recipe).parameters
    strategies = recipe_module.recipe(**{k: v for k, v in offered.items() if k in accepted})
    adapter = da.DomainAdapter(backbone, num_classes=len(classes), strategies=strategies)
    adapter.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    history = adapter.fit(source=(source_x, source_y), target=target_x, target_labeled=labeled, epochs=args.epochs,
                          batch_size=args.batch_size, verbose=1)
    after = gap(adapter)
    out.mkdir(parents=True, exist_ok=True)
    adapter.classifier.save(out / "classifier.keras")
    summary = {
        "recipe": getattr(recipe_module, "__file__", None), "strategies": [type(s).__name__ for s in adapter.strategies],
        "classes": classes, "backbone": args.backbone, "epochs": args.epochs,
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "gap_before": before, "gap_after": after,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    picture = _plot_run(summary, out / "training.png")
    print(f"gap before -> after: " + ", ".join(f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in before))
    print(f"Wrote {out / 'classifier.keras'}, {out / 'summary.json'}" + (f", {picture}" if picture else ""))
    return 0


def _plot_run(summary, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
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
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def recipe_main(recipe_path, argv=None):
    """Command line of a recipe file: ``python recipes/NAME.py --source DIR --target DIR ...``."""
    parser = argparse.ArgumentParser(prog=f"python {recipe_path}", description=(load_recipe(recipe_path).__doc__ or "").split("\n\n")[0])
    _add_run_arguments(parser)
    args = parser.parse_args(argv)
    try:
        sys.exit(_run(load_recipe(recipe_path), args))
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    from domadapt.gap.report import DEFAULT_METRICS, METRICS

    parser = argparse.ArgumentParser(prog="domadapt", description="Domain adaptation for Keras models.")
    commands = parser.add_subparsers(dest="command", required=True)
    gap_parser = commands.add_parser("gap", help="measure the gap between two image sets",
                                     description="Measure the domain gap between two image sets, per layer.")
    gap_parser.add_argument("source", help="folder of images (searched recursively), .npy or .npz")
    gap_parser.add_argument("target", help="folder of images (searched recursively), .npy or .npz")
    gap_parser.add_argument("--backbone", default="mobilenetv3small",
                            help="keras.applications name, path to a .keras model, or 'pixels' (default mobilenetv3small)")
    gap_parser.add_argument("--weights", default="auto",
                            help="'imagenet', a local weights file, 'none', or 'auto' (ImageNet when available)")
    gap_parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS), choices=sorted(METRICS))
    gap_parser.add_argument("--layers", default="auto", choices=["auto", "output"])
    gap_parser.add_argument("--image-size", type=int, default=96, help="side images are resized to (folders only)")
    gap_parser.add_argument("--max-samples", type=int, default=1000, help="images per domain (random subset)")
    gap_parser.add_argument("--json", help="write the table as JSON here")
    gap_parser.add_argument("--plot", help="write the profile plot (PNG) here")
    gap_parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--plot files")
    run_parser = commands.add_parser("run", help="run a recipe on image folders",
                                     description="Train a recipe on image folders and write the classifier, "
                                                 "a JSON summary and a plot to --out.")
    run_parser.add_argument("recipe", help="a recipe name (built-in: see `domadapt recipes`; ./recipes/NAME.py first) "
                                           "or a path to a .py file")
    _add_run_arguments(run_parser)
    commands.add_parser("recipes", help="list the built-in recipes", description="List the built-in recipes.")
    commands.add_parser("demo", help="run the offline sunny-to-rainy demo (options: domadapt demo --help)",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from domadapt import demo

        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "recipes":
        for name, summary in built_in_recipes().items():
            print(f"{name:<18} {summary}")
        return 0
    if args.image_size < 8:
        parser.error("--image-size must be >= 8")
    try:
        if args.command == "run":
            if args.epochs < 1 or args.batch_size < 1:
                parser.error("--epochs and --batch-size must be >= 1")
            return _run(load_recipe(args.recipe), args)
        if args.max_samples < 2:
            parser.error("--max-samples must be >= 2")
        return _gap(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"domadapt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
