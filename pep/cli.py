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

from pep.config import load_params, resolve_data_path
from pep.errors import PepError
from pep.jsonfile import StagedOutputs

log = logging.getLogger("pep")


def _add_params_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="parameter file (default: ./params.yaml)")


def cmd_params(args: argparse.Namespace) -> int:
    cfg = load_params(args.params, profile=args.profile)
    cfg.pop("params_file")
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from pep import stage_settings

    cfg = load_params(args.params)
    if args.check:
        stale = stage_settings.stale(cfg)
        for name in stale:
            print(f"pep: {name} is out of date with {args.params}; run `pep settings`", file=sys.stderr)
        return 1 if stale else 0
    written = stage_settings.refresh(cfg)
    names = ", ".join(p.name for p in written) if written else "none: every job's settings are unchanged"
    print(f"profile {cfg['profile']}: settings rewritten: {names}")
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


def cmd_data_coco(args: argparse.Namespace) -> int:
    from pep.data.download import download_for_params, human_size

    cfg = load_params(args.params, profile=args.profile)
    download = cfg["data"]["download"]
    names = args.files or download["files"]
    source = cfg["data"]["source"]
    if not names or (source == "synth" and not args.out):
        raise PepError(f"profile '{cfg['profile']}' has data.source {source}"
                       + (", which `pep data synth` generates" if source == "synth" else "")
                       + (" and downloads nothing (data.download.files is empty)" if not names else "")
                       + "; for COCO 2017 run `pep data coco --profile coco`, or name the archives "
                         "with --files and the target folder with --out")
    out = args.out or resolve_data_path(cfg, "root")
    outcomes = download_for_params(cfg, out, names, args.mirror, args.keep_archives, progress=not args.quiet)
    fetched = sum(o.downloaded for o in outcomes)
    unpacked = sum(o.extracted for o in outcomes)
    print(f"{out}: {len(outcomes)} archive(s) ready; downloaded {human_size(fetched)}, extracted "
          f"{unpacked} archive(s)" + ("" if fetched or unpacked else " (all were already in place)"))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from pep.data.prepare import prepare

    cfg = load_params(args.params)
    summary = prepare(cfg, progress=not args.quiet, mirror=args.mirror)
    print(f"profile {cfg['profile']}: {summary['source']} data at {summary['root']}: {summary['done']}")
    return 0


def cmd_data_validate(args: argparse.Namespace) -> int:
    from pep.data.validate import validate_dataset

    from pep.config import project_relative

    if args.split:
        if args.annotations or args.images:
            raise PepError("give either --split or --annotations and --images, not both")
        cfg = load_params(args.params)
        annotations = resolve_data_path(cfg, f"{args.split}_annotations")
        images = resolve_data_path(cfg, f"{args.split}_images")
        show_path = lambda path: project_relative(cfg, path)  # noqa: E731
    elif args.annotations and args.images:
        annotations, images, show_path = args.annotations, args.images, str
    else:
        raise PepError("name the data set to check: --split train|val (paths from params), "
                       "or --annotations FILE and --images FOLDER")
    outputs = StagedOutputs([args.report], "`pep data validate --report`") if args.report else None
    report = validate_dataset(annotations, images, check_images=not args.skip_image_check,
                              progress=not args.quiet)
    print(report.summary(max_examples=args.examples))
    record = report.to_dict(show_path)
    if args.split and report.trainable:
        from pep.engine.mechanisms import hidden_instances

        # the instances perceiving can have no descriptor of its own for: excavating's work
        record["instances_without_own_cell"] = hidden = hidden_instances(cfg, args.split)
        print(f"{hidden['without_own_cell']} of {hidden['instances']} instances ({100 * (hidden['share'] or 0):.1f}%) "
              "own no grid cell (every cell of their centre region goes to a smaller instance)")
    if outputs:
        with outputs:
            outputs.write_json(args.report, record)
            outputs.publish()
    return 0 if report.trainable else 1


def _seeds(cfg: dict, seed: int | None) -> list[int]:
    return [seed] if seed is not None else list(cfg["train"]["seeds"])


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from pep import distributed
    from pep.config import run_dir
    from pep.engine import checkpoint
    from pep.engine.curves import plot_training_curves
    from pep.engine.train import train
    from pep.tracking import Tracker

    cfg = load_params(args.params)
    processes = distributed.processes_to_launch(cfg["train"])
    if not distributed.under_launcher() and (plan := distributed.launch_plan(processes, args.argv)):
        # One command for dvc, Snakemake and SLURM jobs: it starts torchrun itself (in a SLURM
        # allocation of several nodes, one torchrun per node through srun; see pep.distributed).
        return distributed.launch(plan)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        for seed in _seeds(cfg, args.seed):
            tracker = Tracker(cfg, args.variant, seed, enabled=main_rank and not args.no_tracking)
            with tracker.start("train"):
                summary = train(cfg, args.variant, seed, max_iters=args.max_iters, tracker=tracker)
                if main_rank:
                    folder = run_dir(cfg, args.variant, seed)
                    curves = plot_training_curves(folder / "train_log.jsonl", folder / "training_curves.png",
                                                  f"{args.variant}, seed {seed}")
                    tracker.log_metrics({"train_time_s": summary["train_time_s"],
                                         "images_seen": summary["images_seen"]})
                    tracker.log_dict({k: v for k, v in cfg.items() if k != "params_file"}, "config.json")
                    tracker.log_artifact(folder / "train_log.jsonl")
                    tracker.log_artifact(curves)
                    model_uri = _log_model(cfg, tracker, args.variant, seed, folder,
                                           register=cfg["tracking"]["register_models"] and args.max_iters is None)
                    print(f"trained {args.variant} seed {seed}: {summary['iterations']} iterations, "
                          f"{summary['images_seen']} images in {summary['train_time_s']:.0f} s -> "
                          f"{folder / 'model_final.pt'}" + (f" (MLflow: {model_uri})" if model_uri else ""))
        if main_rank and args.max_iters is None:
            # Every seed is done: the checkpoints have served (a crash in a later seed resumed the
            # earlier ones at their end). Without them, the next run of this stage, which
            # dvc or Snakemake start only when code or settings changed, trains afresh.
            for seed in _seeds(cfg, args.seed):
                checkpoint.remove_checkpoints(run_dir(cfg, args.variant, seed))
    finally:
        distributed.shutdown()
    return 0


def _log_model(cfg: dict, tracker, variant: str, seed: int, folder, register: bool) -> str | None:
    """The trained model logged (and registered) in MLflow; its URI, None without tracking."""
    from pep import mlflow_model
    from pep.engine import checkpoint

    if not tracker.enabled:
        return None
    final = folder / checkpoint.FINAL
    described = mlflow_model.description(cfg, variant, seed, checkpoint.load(final))
    return tracker.log_model(final, described, register=register)


def _device(cfg: dict):
    """Evaluation runs where training does (train.device: a GPU when there is one, for `auto`)."""
    from pep.distributed import choose_device

    return choose_device(cfg["train"]["device"])


def _tracker_factory(cfg: dict, variant: str, enabled: bool):
    from pep.tracking import Tracker

    return lambda seed: Tracker(cfg, variant, seed, enabled=enabled)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pep.engine.evaluate import evaluate_variant

    cfg = load_params(args.params)
    if args.split != "val":
        raise PepError("`pep evaluate` scores the val split; test-dev has no public ground truth: "
                       "use `pep predict --split test-dev`")
    metrics = evaluate_variant(cfg, args.variant, _seeds(cfg, args.seed), device=_device(cfg),
                               tracker_factory=_tracker_factory(cfg, args.variant, not args.no_tracking),
                               progress=not args.quiet)
    print(f"{args.variant} val: " + ", ".join(f"{k} {metrics[k]:.1f}" for k in
                                               ("AP", "AP50", "AP75", "APs", "APm", "APl")))
    return 0


def cmd_mechanisms(args: argparse.Namespace) -> int:
    from pep.engine.mechanisms import mechanisms_variant

    cfg = load_params(args.params)
    per_seed = mechanisms_variant(cfg, args.variant, _seeds(cfg, args.seed), device=_device(cfg),
                                  progress=not args.quiet)
    for seed, record in per_seed.items():
        rates = record["rates"]
        print(f"{args.variant} seed {seed}: originals find {100 * rates['originals_recall']:.1f}% of the "
              f"instances, detections {100 * rates['final_recall']:.1f}%; AP "
              + ", ".join(f"{k} {v['AP']:.1f}" for k, v in record["ap"].items()))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pep.engine.sweep import format_summary, parse_options, sweep

    cfg = load_params(args.params)
    options = parse_options(args.set, args.variant)
    table = sweep(cfg, args.variant, _seeds(cfg, args.seed), options, args.out, device=_device(cfg),
                  progress=not args.quiet)
    print(format_summary(table, list(options)))
    print(f"every (combination, seed): {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = load_params(args.params)
    if args.images is not None or args.out is not None or args.model is not None:
        return _predict_images(cfg, args)
    from pep.engine.evaluate import predict_test_dev

    if args.variant is None:
        raise PepError("`pep predict` needs --variant (the test-dev submission), or --images SOURCE... "
                       "--out OUT with --variant or --model (your own images)")
    summary = predict_test_dev(cfg, args.variant, _seeds(cfg, args.seed), device=_device(cfg),
                               progress=not args.quiet)
    line = f"{args.variant} test-dev: {summary['detections']} detections on {summary['images']} images -> {summary['submission']}"
    if "metrics" in summary:
        line += f" (scored locally: AP {summary['metrics']['AP']:.1f}" + (
            f", mean of {len(summary['seeds'])} seeds)" if len(summary["seeds"]) > 1 else ")")
    print(line)
    return 0


def _predict_images(cfg: dict, args: argparse.Namespace) -> int:
    """`pep predict --images SOURCE... --out OUT`: one's own images (folders, files, globs), segmented."""
    from pep.engine.segment import segment_images

    if args.images is None or args.out is None:
        raise PepError("`pep predict --images SOURCE... --out OUT`: both are needed (SOURCE: a folder, "
                       "an image file or a quoted glob such as 'photos/*.jpg')")
    if (args.variant is None) == (args.model is None):
        raise PepError("`pep predict --images`: give the model as either --variant V [--seed S] "
                       "(from runs/) or --model URI (from MLflow), not both or neither")
    if args.variant is not None:
        from pep.engine.segment import Segmenter
        from pep.engine.train import load_trained

        seed = _seeds(cfg, args.seed)[0]
        device = _device(cfg)
        model, state = load_trained(cfg, args.variant, seed, device)
        segmenter = Segmenter(model, cfg["data"]["input"], list(state["class_names"]), device)
        source = f"{args.variant} seed {seed}"
    else:
        from pep.tracking import load_segmenter

        segmenter = load_segmenter(cfg, args.model)
        source = args.model
    summary = segment_images(segmenter, args.images, args.out, args.score_threshold,
                             progress=not args.quiet)
    print(f"{source}: {summary['instances']} instances (score >= {args.score_threshold}) on "
          f"{summary['images']} images -> {summary['results']}, {summary['overlays']}/")
    for skipped in summary["skipped"]:
        print(f"pep: skipped {skipped['path']}: not a readable image ({skipped['reason']})",
              file=sys.stderr)
    return 1 if summary["skipped"] else 0


def cmd_eval_results(args: argparse.Namespace) -> int:
    from pep.evaluation import eval_results_command

    print(json.dumps(eval_results_command(args.gt, args.results, args.iou_type)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pep.tracking import compare_runs, format_comparison

    print(format_comparison(compare_runs(load_params(args.params))))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from pep.reports.figures import make_figures

    for path in make_figures(load_params(args.params), args.score_threshold, args.images):
        print(f"wrote {path}")
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    from pep.reports.index import index_file, page_file, write_index
    from pep.reports.tables import table_files, write_tables

    cfg = load_params(args.params)
    with StagedOutputs([*table_files(cfg), index_file(cfg), page_file(cfg)], "`pep tables`") as outputs:
        tables = write_tables(cfg, outputs=outputs)
        index = write_index(cfg, tables, outputs)
        outputs.publish()
    for table in tables.values():
        print(f"wrote {table.name}.md/.tex/.csv ({len(table.cells)} rows)")
    print(f"wrote {index} and {index.with_name('index.html')}")
    return 0


def cmd_check_results(args: argparse.Namespace) -> int:
    from pep.reports.check import EXPECTED_FILE, check_results, format_checks

    checks = check_results(load_params(args.params), args.expected or EXPECTED_FILE)
    print(format_checks(checks))
    drifted = [c for c in checks if not c.ok]
    for check in drifted:
        print(f"pep: drifted: {check.describe()}", file=sys.stderr)
    return 1 if drifted else 0


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

    variants = ("baseline", "excavate", "purify", "pep")
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
