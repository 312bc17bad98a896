"""`pep data validate`: the data report, what the validator finds (pep.data.validate) and, for a
split of the params' data set that can be trained on, how crowded it is for perceiving
(pep.data.crowding)."""

from __future__ import annotations

from pathlib import Path

from pep.config import load_params, project_relative, resolve_data_path
from pep.errors import PepError
from pep.jsonfile import StagedOutputs


def validate_command(params: Path, split: str | None, annotations: Path | None, images: Path | None,
                     report_path: Path | None, examples: int = 3, check_images: bool = True,
                     progress: bool = True) -> int:
    """Check `split` of the params' data set, or the annotation file and image folder given;
    print the findings, write them as JSON to `report_path` when given; exit 1 when the set
    cannot be trained on."""
    from pep.data.validate import validate_dataset

    if split:
        if annotations or images:
            raise PepError("give either --split or --annotations and --images, not both")
        cfg = load_params(params)
        annotations = resolve_data_path(cfg, f"{split}_annotations")
        images = resolve_data_path(cfg, f"{split}_images")
        show_path = lambda path: project_relative(cfg, path)  # noqa: E731
    elif annotations and images:
        show_path = str
    else:
        raise PepError("name the data set to check: --split train|val (paths from params), "
                       "or --annotations FILE and --images FOLDER")
    outputs = StagedOutputs([report_path], "`pep data validate --report`") if report_path else None
    report = validate_dataset(annotations, images, check_images=check_images, progress=progress)
    print(report.summary(max_examples=examples))
    record = report.to_dict(show_path)
    if split and report.trainable:
        from pep.data.crowding import hidden_instances, summary_line

        # the instances perceiving can have no descriptor of its own for (excavating's work) and
        # the same-class pairs Matrix NMS may suppress one of (purifying's)
        record["instances_without_own_cell"] = hidden = hidden_instances(cfg, split)
        if cfg["data"]["source"] == "synth":
            record["crowding_level"] = cfg["data"]["synth"]["crowding"]
        print(summary_line(hidden))
    if outputs:
        with outputs:
            outputs.write_json(report_path, record)
            outputs.publish()
    return 0 if report.trainable else 1
