"""Reading and writing the JSON (and YAML) files users hand us or read from us."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pep.errors import PepError


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """The parsed file, or a PepError naming it: "<path>: <what> not found" / "is not valid JSON"."""
    return _read(path, what, json.loads, json.JSONDecodeError, "JSON", hint)


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML file, or a PepError naming it: "<path>: <what> not found" / "not valid YAML"."""
    import yaml

    return _read(path, what, yaml.safe_load, yaml.YAMLError, "YAML")


def _read(path, what: str, parse, parse_error: type[Exception], kind: str, hint: str = "") -> Any:
    path = Path(path)
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PepError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, parse_error) as exc:
        raise PepError(f"{path}: {what} is not valid {kind} ({exc}){hint}") from None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
