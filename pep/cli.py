"""The `pep` command: one subcommand per pipeline stage.

dvc.yaml and the Snakefile call these commands and nothing else, so that a stage behaves the
same whichever tool runs it. Problems the user can fix are reported as one message and a
non-zero exit status, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

from pep.config import DEFAULT_PARAMS, load_params, resolve_data_path
from pep.errors import PepError

log = logging.getLogger("pep")


def _add_params_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="parameter file (default: ./params.yaml)")


def cmd_params(args: argparse.Namespace) -> int:
    cfg = load_params(args.params, profile=args.profile)
    cfg.pop("params_file")
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pep.data.synth import generate

    cfg = load_params(args.params)
    out = args.out or resolve_data_path(cfg, "root")
    summary = generate(cfg["data"]["synth"], out, progress=not args.quiet)
    print(f"wrote {sum(summary['images'].values())} images and "
          f"{sum(summary['annotations'].values())} annotations to {summary['root']} "
          f"in {summary['seconds']:.1f} s "
          f"(train/val/test-dev images: {summary['images']['train']}/{summary['images']['val']}/"
          f"{summary['images']['test-dev']})")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from pep.data.validate import validate_dataset

    report = validate_dataset(args.annotations, args.images, check_images=not args.skip_image_check,
                              progress=not args.quiet)
    print(report.summary(max_examples=args.examples))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.trainable else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pep", description="Perceive, Excavate and Purify: the reproduction pipeline's stages.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", help="validate params.yaml and print the effective parameters")
    _add_params_arg(p)
    p.add_argument("--profile", help="show this profile instead of the file's `profile` key")
    p.set_defaults(func=cmd_params)

    data = sub.add_parser("data", help="data sets: generate, validate")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = data_sub.add_parser("synth", help="generate the embedded synthetic data set (COCO layout)")
    _add_params_arg(p)
    p.add_argument("--out", type=Path, help="output folder (default: data.root of the params)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)

    p = data_sub.add_parser("validate", help="check a COCO-format data set before training on it")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON file")
    p.add_argument("--images", type=Path, required=True, help="folder of the images it lists")
    p.add_argument("--report", type=Path, help="also write the findings as JSON here")
    p.add_argument("--examples", type=int, default=3, help="examples shown per kind of problem")
    p.add_argument("--skip-image-check", action="store_true",
                   help="do not open image files (only check the annotation file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PepError as exc:
        print(f"pep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
