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

from pep.config import VARIANTS, chosen_seeds, load_params
from pep.errors import PepError

log = logging.getLogger("pep")


def _add_params_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="parameter file (default: ./params.yaml)")


# Each command hands its arguments to the module that owns the work; that function prints the
# outcome and returns the exit status. Modules are imported on use: `pep params` stays quick.

def cmd_params(args: argparse.Namespace) -> int:
    cfg = load_params(args.params, profile=args.profile)
    cfg.pop("params_file")
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from pep.stage_settings import settings_command

    return settings_command(load_params(args.params), args.check)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pep.data.synth import synth_command

    return synth_command(load_params(args.params), args.out, progress=not args.quiet)


def cmd_data_coco(args: argparse.Namespace) -> int:
    from pep.data.download import coco_command

    return coco_command(load_params(args.params, profile=args.profile), args.files, args.out, args.mirror,
                        args.keep_archives, progress=not args.quiet)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from pep.data.prepare import prepare_command

    return prepare_command(load_params(args.params), args.mirror, progress=not args.quiet)


def cmd_data_validate(args: argparse.Namespace) -> int:
    from pep.data.report import validate_command

    return validate_command(args.params, args.split, args.annotations, args.images, args.report,
                            args.examples, check_images=not args.skip_image_check, progress=not args.quiet)


def cmd_data_crowding(args: argparse.Namespace) -> int:
    from pep.data.crowding import crowding_command

    coco_cfg = load_params(args.params, profile="coco") if args.coco_root else None
    return crowding_command(load_params(args.params), args.level, args.coco_root, coco_cfg, args.split,
                            args.report, progress=not args.quiet)


def _trackers(cfg: dict, variant: str, tracking: bool):
    """The MLflow runs a stage records into, one per seed (pep.tracking: the engine never
    imports it); `enabled=False` (a rank other than 0) records nothing."""
    from pep.tracking.runs import Tracker

    return lambda seed, enabled=True: Tracker(cfg, variant, seed, enabled=tracking and enabled)


def cmd_train(args: argparse.Namespace) -> int:
    from pep.engine.train import train_command

    cfg = load_params(args.params)
    return train_command(cfg, args.variant, chosen_seeds(cfg, args.seed), args.argv,
                         _trackers(cfg, args.variant, not args.no_tracking), args.max_iters)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pep.engine.evaluate import evaluate_command

    cfg = load_params(args.params)
    return evaluate_command(cfg, args.variant, args.split, chosen_seeds(cfg, args.seed),
                            tracker_factory=_trackers(cfg, args.variant, not args.no_tracking),
                            progress=not args.quiet)


def cmd_mechanisms(args: argparse.Namespace) -> int:
    from pep.engine.mechanisms import mechanisms_command

    cfg = load_params(args.params)
    return mechanisms_command(cfg, args.variant, chosen_seeds(cfg, args.seed), progress=not args.quiet)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pep.engine.sweep import sweep_command

    cfg = load_params(args.params)
    return sweep_command(cfg, args.variant, chosen_seeds(cfg, args.seed), args.set, args.out,
                         progress=not args.quiet)


def _mlflow_segmenter(cfg: dict, model_uri: str):
    from pep.tracking.model import load_segmenter

    return load_segmenter(cfg, model_uri)


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = load_params(args.params)
    if args.images is not None or args.out is not None or args.model is not None:
        from pep.engine.segment import predict_images_command

        return predict_images_command(cfg, args.images, args.out, args.variant, args.seed, args.model,
                                      args.score_threshold, load_model=_mlflow_segmenter,
                                      progress=not args.quiet)
    from pep.engine.evaluate import predict_command

    return predict_command(cfg, args.variant, chosen_seeds(cfg, args.seed), progress=not args.quiet)


def cmd_eval_results(args: argparse.Namespace) -> int:
    from pep.evaluation import eval_results_command

    print(json.dumps(eval_results_command(args.gt, args.results, args.iou_type)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pep.tracking.compare import compare_runs, format_comparison

    print(format_comparison(compare_runs(load_params(args.params))))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from pep.reports.figures import figures_command

    return figures_command(load_params(args.params), args.score_threshold, args.images)


def cmd_tables(args: argparse.Namespace) -> int:
    from pep.reports.index import tables_command

    return tables_command(load_params(args.params))


def cmd_check_results(args: argparse.Namespace) -> int:
    from pep.reports.check import check_command

    return check_command(load_params(args.params), args.expected)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pep", description="Perceive, Excavate and Purify: the reproduction pipeline's stages.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("params", help="validate params.yaml and print the effective parameters")
    _add_params_arg(p)
    p.add_argument("--profile", help="show this profile instead of the file's `profile` key")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("settings", help="write each job's result-relevant settings to settings/*.json "
                                        "(the files dvc and Snakemake rerun jobs by)")
    _add_params_arg(p)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each out-of-date file")
    p.set_defaults(func=cmd_settings)

    data = sub.add_parser("data", help="data sets: generate, validate")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = data_sub.add_parser("synth", help="generate the embedded synthetic data set (COCO layout)")
    _add_params_arg(p)
    p.add_argument("--out", type=Path, help="output folder (default: data.root of the params)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)

    p = data_sub.add_parser("coco", help="download, verify (md5) and unpack COCO 2017; resumable, "
                                         "skips what is already in place")
    _add_params_arg(p)
    p.add_argument("--profile", help="use this profile's data section (e.g. coco) instead of the "
                                     "file's `profile` key")
    p.add_argument("--out", type=Path, help="target folder (default: data.root of the profile)")
    p.add_argument("--mirror", help="base URL replacing the official host, same relative paths "
                                    "(default: data.download.mirror)")
    p.add_argument("--files", nargs="+", metavar="NAME",
                   help="archives to fetch, e.g. zips/val2017.zip (default: data.download.files)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the zips after extraction (default: data.download.keep_archives)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_coco)

    p = data_sub.add_parser("prepare", help="the pipeline's data stage: generate, download or check the "
                                            "profile's data set (data.source)")
    _add_params_arg(p)
    p.add_argument("--mirror", help="coco only: base URL replacing the official host")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_prepare)

    p = data_sub.add_parser("validate", help="check a COCO-format data set before training on it")
    _add_params_arg(p)
    p.add_argument("--split", choices=["train", "val"], help="check this split of the params' data set")
    p.add_argument("--annotations", type=Path, help="COCO instances JSON file")
    p.add_argument("--images", type=Path, help="folder of the images it lists")
    p.add_argument("--report", type=Path, help="also write the findings as JSON here")
    p.add_argument("--examples", type=int, default=3, help="examples shown per kind of problem")
    p.add_argument("--skip-image-check", action="store_true",
                   help="do not open image files (only check the annotation file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_validate)

    p = data_sub.add_parser("crowding", help="how many instances own no grid cell, and how many overlap one "
                                             "of their class, at each synthetic crowding level (and in a COCO folder)")
    _add_params_arg(p)
    p.add_argument("--level", nargs="+", metavar="NAME",
                   help="crowding levels to measure (default: all of data.synth.crowding_levels)")
    p.add_argument("--coco-root", type=Path, metavar="FOLDER",
                   help="also a COCO-layout folder (e.g. ../shared/data/tiny_coco), under the coco profile's grids")
    p.add_argument("--split", choices=["train", "val"], default="val")
    p.add_argument("--report", type=Path, help="also write the figures as JSON here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_data_crowding)

    variants = VARIANTS
    p = sub.add_parser("train", help="train one variant (resumes from its newest checkpoint); "
                                     "torchrun runs it on several processes")
    _add_params_arg(p)
    p.add_argument("--variant", required=True, choices=variants)
    p.add_argument("--seed", type=int, help="one seed (default: every seed of train.seeds)")
    p.add_argument("--max-iters", type=int, help="stop after this many iterations (a smoke run); refused "
                                                 "where it would replace a fully trained model")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained variant on val (COCO segm and bbox)")
    _add_params_arg(p)
    p.add_argument("--variant", required=True, choices=variants)
    p.add_argument("--split", default="val", choices=["val"])
    p.add_argument("--seed", type=int, help="one seed (default: every seed of train.seeds)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mechanisms", help="what perceiving, excavating and purifying find, merge and lose "
                                          "on val (metrics/<variant>/mechanisms.json)")
    _add_params_arg(p)
    p.add_argument("--variant", required=True, choices=variants)
    p.add_argument("--seed", type=int, help="one seed (default: every seed of train.seeds)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_mechanisms)

    p = sub.add_parser("sweep", help="re-score trained models on val under other inference settings, "
                                     "every combination, every seed")
    _add_params_arg(p)
    p.add_argument("--variant", required=True, choices=variants)
    p.add_argument("--set", action="append", required=True, metavar="KEY=V1,V2",
                   help="an inference setting and the values to try (repeatable: every combination)")
    p.add_argument("--seed", type=int, help="one seed (default: every seed of train.seeds)")
    p.add_argument("--out", type=Path, default=Path("sweep.csv"), help="CSV of every (combination, seed)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("predict", help="write the COCO test-dev submission zip of a trained variant, or "
                                       "segment your own images (--images SOURCE... --out OUT)")
    _add_params_arg(p)
    p.add_argument("--variant", choices=variants, help="the trained variant (from runs/)")
    p.add_argument("--split", default="test-dev", choices=["test-dev"])
    p.add_argument("--seed", type=int, help="the seed whose model predicts (default: the first)")
    p.add_argument("--images", nargs="+", metavar="SOURCE",
                   help="images to segment: folders (their JPEG/PNG files), image files, or quoted "
                        "globs ('photos/*.jpg', 'shots/**/*.png'); several may be given")
    p.add_argument("--out", type=Path, help="with --images: where results.json and overlays/ go")
    p.add_argument("--model", help="with --images: an MLflow model URI instead of --variant, e.g. "
                                   "models:/pep-pep/1 or runs:/<run id>/model")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="with --images: instances kept and drawn from this score on (default 0.3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("eval-results", help="score any COCO results file; prints the 12 stats as JSON, in percent "
                                          "(as metrics/<variant>/*.json hold them)")
    p.add_argument("gt", type=Path, help="ground-truth annotation file")
    p.add_argument("results", type=Path, help="results file (a JSON list of detections)")
    p.add_argument("--iou-type", default="segm", choices=["segm", "bbox"])
    p.set_defaults(func=cmd_eval_results)

    p = sub.add_parser("compare", help="the experiment's MLflow runs side by side")
    _add_params_arg(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("figures", help="training curves, AP per variant and a qualitative grid "
                                       "as PNGs under reports/figures/")
    _add_params_arg(p)
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="detections drawn in the qualitative grid score at least this (default: 0.3)")
    p.add_argument("--images", type=int, default=4, help="val images (rows) in the qualitative grid")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("tables", help="the ablation and comparison tables (md, tex, csv) under "
                                      "reports/tables/, and reports/README.md")
    _add_params_arg(p)
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("check-results", help="compare metrics/<variant>/val.json with the expected "
                                             "values; exit 1 naming each drifted number")
    _add_params_arg(p)
    p.add_argument("--expected", type=Path, help="expected values and tolerances "
                                                 "(default: pep/reports/expected_results.yaml)")
    p.set_defaults(func=cmd_check_results)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except PepError as exc:
        # a resumable stop (pep.engine.preemption: a signal, its checkpoint written) is no error
        print(f"pep: {exc}" if getattr(exc, "resumable", False) else f"pep: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("pep: interrupted; nothing half-written is left (training resumes from its last checkpoint)",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pep params | head`
        return 0
    except OSError as exc:  # the file system said no where no check foresaw it: name the file
        if exc.filename is None:
            raise
        print(f"pep: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
