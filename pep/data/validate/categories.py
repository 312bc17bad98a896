"""The `categories` list: each record's id and name, duplicate ids, id 0, and names used by more
than one category, told apart by whether annotations use them: a repeated name no annotation
uses (a labelling service's project-name category) is left out of training and evaluation
(`left_out_categories`), one that annotations use twice is an error.
"""

from __future__ import annotations

from typing import Any

from pep.data.validate.fields import Check, _fields, _int, _is_int, _string, _where
from pep.data.validate.findings import ValidationReport

CATEGORY_FIELDS: dict[str, Check] = {"id": _int, "name": _string}


def used_category_ids(annotations: Any) -> set:
    """The category_id values that annotations use."""
    if not isinstance(annotations, list):
        return set()
    return {a.get("category_id") for a in annotations if isinstance(a, dict)
            and isinstance(a.get("category_id"), (int, str))}


def left_out_categories(categories: list, used: set) -> dict[int, str]:
    """Categories that no annotation uses and whose name another category carries: {id: why}.
    Labelling services export the project's name as such a category (often id 0, supercategory
    "none"); training and evaluation leave them out, so a class name stays unambiguous. Where
    no category of the name is used, the first one stays."""
    by_name: dict[str, list[dict]] = {}
    for record in categories:
        if isinstance(record, dict) and _is_int(record.get("id")) and isinstance(record.get("name"), str):
            by_name.setdefault(record["name"], []).append(record)
    out = {}
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        kept = [r for r in group if r["id"] in used] or group[:1]
        for record in group:
            if record not in kept:
                out[record["id"]] = (f"no annotation uses it and category id {kept[0]['id']} "
                                     f"is also named {name!r}")
    return out


def _check_categories(report: ValidationReport, categories: list | None, used: set) -> set[int] | None:
    """Field checks, duplicates and id 0; the category ids (None: no usable list)."""
    if categories is None:
        return None
    ids: dict[int, str] = {}
    names: dict[str, str] = {}
    left_out = report.left_out_categories = left_out_categories(categories, used)
    for i, record in enumerate(categories):
        good = _fields(report, "categories", i, record, CATEGORY_FIELDS)
        if good is None:
            continue
        where = _where("categories", i, record)
        if "id" in good:
            cid = record["id"]
            if cid in ids:
                report.add("duplicate_category_id", f"{where}: id {cid} is also used by {ids[cid]}")
            else:
                ids[cid] = where
            if cid == 0:
                report.add("category_id_zero", f"{where}: 'id' is 0")
        if "name" in good:
            name = record["name"]
            if "id" in good and record["id"] in left_out:
                report.add("unused_duplicate_category", f"{where}: 'name' {name!r}: "
                                                        f"{left_out[record['id']]}")
            elif name in names:
                report.add("duplicate_category_name",
                           f"{where}: 'name' {name!r} is also used by {names[name]}, and annotations "
                           "use both: give each class one id, or rename one")
            else:
                names[name] = where
    return set(ids)
