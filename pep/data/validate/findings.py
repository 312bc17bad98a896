"""The report the checks write into, and the kinds of problem it can hold: each kind (a stable
snake_case name) with its severity and a description, in the order the summary shows them;
`Finding` keeps the count and first examples of one kind, `ValidationReport` gathers them with
the set's counts and writes the readable summary and the JSON record. Checks nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Severity = Literal["error", "warning"]

# kind -> (severity, what it means); the order here is the order of the summary's blocks.
KINDS: dict[str, tuple[Severity, str]] = {
    "file_not_found": ("error", "the annotation file does not exist"),
    "file_unreadable": ("error", "the annotation file cannot be read as UTF-8 text"),
    "json_syntax": ("error", "the annotation file is not valid JSON"),
    "missing_key": ("error", "a required key is absent"),
    "wrong_type": ("error", "a value has the wrong type"),
    "invalid_value": ("error", "a value is out of its range"),
    "duplicate_image_id": ("error", "an id used by more than one image record"),
    "duplicate_annotation_id": ("error", "an id used by more than one annotation"),
    "duplicate_category_id": ("error", "an id used by more than one category"),
    "duplicate_category_name": ("error", "a name used by more than one category that annotations "
                                         "use: class names in result tables would be ambiguous"),
    "unknown_image": ("error", "an annotation's image_id is not among the images"),
    "unknown_category": ("error", "an annotation's category_id is not among the categories"),
    "rle_size_mismatch": ("error", "an RLE's size disagrees with its image's height and width"),
    "bad_rle": ("error", "an RLE's counts are malformed or do not cover its size exactly"),
    "no_annotations": ("error", "not one annotation is usable for training"),
    "image_dir_not_found": ("error", "the image folder does not exist"),
    "image_missing_on_disk": ("error", "an image file is missing"),
    "image_unreadable": ("error", "an image file cannot be read as an image"),
    "image_size_mismatch": ("error", "an image file's size differs from its record's width/height"),
    "degenerate_segmentation": ("warning", "an annotation or polygon without a usable mask, "
                                           "which the training loader drops and evaluation "
                                           "scores as an empty mask (a miss)"),
    "odd_polygon_length": ("warning", "a polygon with an odd number of coordinates, "
                                      "of which pycocotools ignores the last"),
    "category_id_zero": ("warning", "category id 0, which other tools reserve for background; "
                                    "this pipeline maps ids itself"),
    "annotation_id_zero": ("warning", "annotation id 0, which pycocotools' evaluation takes for "
                                      "'unmatched'; this pipeline renumbers annotation ids on loading"),
    "duplicate_file_name": ("warning", "one image file listed by more than one image record"),
    "unused_duplicate_category": ("warning", "a category no annotation uses whose name repeats "
                                             "another's (labelling services export the project's "
                                             "name so); left out of training and evaluation"),
}

# What only training needs: a set without one usable instance can still be scored.
TRAINING_ONLY = {"no_annotations"}

KEPT_EXAMPLES = 100  # per kind, in the report; the summary shows fewer


@dataclass
class Finding:
    """All occurrences of one kind of problem: how many, and the first few in words."""

    kind: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind][0]


@dataclass
class ValidationReport:
    """What `validate_dataset` found: counts of the set's contents and problems by kind."""

    annotations: Path
    images: Path
    images_checked: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    left_out_categories: dict[int, str] = field(default_factory=dict)  # see left_out_categories()

    def add(self, kind: str, example: str) -> None:
        found = self.findings.setdefault(kind, Finding(kind))
        found.count += 1
        if len(found.examples) < KEPT_EXAMPLES:
            found.examples.append(example)

    def _total(self, severity: Severity) -> int:
        return sum(f.count for f in self.findings.values() if f.severity == severity)

    @property
    def errors(self) -> int:
        return self._total("error")

    @property
    def warnings(self) -> int:
        return self._total("warning")

    @property
    def trainable(self) -> bool:
        return self.errors == 0

    def _ordered(self) -> list[Finding]:
        rank = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(self.findings.values(),
                      key=lambda f: (f.severity != "error", rank[f.kind]))

    def summary(self, max_examples: int = 3) -> str:
        """Readable text: the file and its counts, one block per kind, then the verdict."""
        c = self.counts
        if c:
            head = (f"{self.annotations}: {c['images']} images ({c['images_without_annotations']} "
                    f"without annotations), {c['annotations']} annotations ({c['non_crowd']} "
                    f"non-crowd, {c['crowd']} crowd), {c['categories']} categories")
            if not self.images_checked:
                head += "; image files not checked"
        else:
            head = f"{self.annotations}: could not be read"
        lines = [head]
        for found in self._ordered():
            shown = found.examples[:max(max_examples, 0)]
            lines.append(f"{found.severity.upper()} {found.kind}: {found.count} "
                         f"({KINDS[found.kind][1]})" + (":" if shown else ""))
            lines += [f"    {example}" for example in shown]
            if found.count > len(shown) and shown:
                lines.append(f"    ... and {found.count - len(shown)} more")
        warned = f", {self.warnings} warning(s)" if self.warnings else ""
        lines.append(f"OK: can be trained on{warned}" if self.trainable
                     else f"NOT TRAINABLE: {self.errors} error(s){warned}")
        return "\n".join(lines)

    def to_dict(self, show_path=str) -> dict:
        """The findings as JSON; `show_path` writes the two paths (pep.config.project_relative
        keeps a project's report the same wherever the project lies)."""
        return {
            "annotations": show_path(self.annotations),
            "images": show_path(self.images),
            "images_checked": self.images_checked,
            "trainable": self.trainable,
            "errors": self.errors,
            "warnings": self.warnings,
            "counts": dict(self.counts),
            "problems": {f.kind: {"severity": f.severity, "description": KINDS[f.kind][1],
                                  "count": f.count, "examples": list(f.examples)}
                         for f in self._ordered()},
        }
