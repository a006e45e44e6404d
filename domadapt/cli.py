"""The ``domadapt`` command line: ``domadapt gap ...`` and ``domadapt demo ...``."""

from __future__ import annotations

import argparse
import sys



def _gap(args):
    import keras

    from domadapt import gap
    from domadapt._backbones import load_backbone
    from domadapt._images import read_images

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
    commands.add_parser("demo", help="run the offline sunny-to-rainy demo (options: domadapt demo --help)",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from domadapt import demo

        return demo.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.max_samples < 2 or args.image_size < 8:
        parser.error("--max-samples must be >= 2 and --image-size >= 8")
    try:
        return _gap(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"domadapt gap: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
