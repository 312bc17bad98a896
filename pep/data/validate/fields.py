"""The keys of one record and the type and range of each value: small value checks (an int, a
positive int, a string, a finite number, a bbox, iscrowd, a segmentation's polygons or RLE
shape), `_fields`, which runs a record kind's checks and reports what is missing or ill-typed,
and how examples name a record and show a value. Used by the image, category and annotation
checks, which each declare the keys their records need.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from pep.data.validate.findings import ValidationReport

# --- field checks: each returns None (fine) or (kind, what is wrong after "'key' ") ---

Check = Callable[[Any], tuple[str, str] | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite JSON number (json.loads accepts NaN and Infinity; no tool can use them)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _int(v: Any) -> tuple[str, str] | None:
    return None if _is_int(v) else ("wrong_type", f"should be an int, got {_show(v)}")


def _positive_int(v: Any) -> tuple[str, str] | None:
    if not _is_int(v):
        return "wrong_type", f"should be a positive int, got {_show(v)}"
    return None if v > 0 else ("invalid_value", f"should be a positive int, got {v}")


def _string(v: Any) -> tuple[str, str] | None:
    return None if isinstance(v, str) else ("wrong_type", f"should be a string, got {_show(v)}")


def _number(v: Any) -> tuple[str, str] | None:
    return None if _is_number(v) else ("wrong_type", f"should be a number, got {_show(v)}")


def _bbox(v: Any) -> tuple[str, str] | None:
    if isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)):
        return None
    return "wrong_type", f"should be 4 numbers [x, y, width, height], got {_show(v)}"


def _iscrowd(v: Any) -> tuple[str, str] | None:
    if not _is_int(v):
        return "wrong_type", f"should be 0 or 1, got {_show(v)}"
    return None if v in (0, 1) else ("invalid_value", f"should be 0 or 1, got {v}")


def _segmentation(v: Any) -> tuple[str, str] | None:
    if isinstance(v, list):
        if v and all(map(_is_number, v)):
            return "wrong_type", ("is a flat list of numbers; polygons go in a list of lists: "
                                  "[[x1, y1, x2, y2, ...]]")
        for i, polygon in enumerate(v):
            if not (isinstance(polygon, list) and all(map(_is_number, polygon))):
                return "wrong_type", f"polygon {i} should be a list of numbers, got {_show(polygon)}"
        return None
    if isinstance(v, dict):
        for key in ("counts", "size"):
            if key not in v:
                return "missing_key", f"is an RLE without '{key}'"
        counts, size = v["counts"], v["size"]
        if not (isinstance(counts, str) or (isinstance(counts, list)
                                            and all(_is_int(n) and n >= 0 for n in counts))):
            return "wrong_type", ("RLE 'counts' should be a string or a list of non-negative ints, "
                                  f"got {_show(counts)}")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(n) and n > 0 for n in size)):
            return "wrong_type", f"RLE 'size' should be [height, width], got {_show(size)}"
        return None
    return "wrong_type", ("should be a list of polygons or an RLE {counts, size}, "
                          f"got {_show(v)}")


def _where(section: str, index: int, record: Any) -> str:
    """How examples name a record: `annotations[12] (id 907)`."""
    if isinstance(record, dict) and _is_int(record.get("id")):
        return f"{section}[{index}] (id {record['id']})"
    return f"{section}[{index}]"


def _fields(report: ValidationReport, section: str, index: int, record: Any,
            spec: dict[str, Check]) -> set[str] | None:
    """Report missing or ill-typed keys of one record; the keys that passed (None: not a dict)."""
    where = _where(section, index, record)
    if not isinstance(record, dict):
        report.add("wrong_type", f"{where}: should be an object, got {_show(record)}")
        return None
    good = set()
    for key, check in spec.items():
        if key not in record:
            report.add("missing_key", f"{where}: no '{key}'")
            continue
        problem = check(record[key])
        if problem:
            report.add(problem[0], f"{where}: '{key}' {problem[1]}")
        else:
            good.add(key)
    return good


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
