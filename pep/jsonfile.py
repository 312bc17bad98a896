"""Reading and writing the JSON (and YAML) files users hand us or read from us."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pep.errors import PepError


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """The parsed file, or a PepError naming it: "<path>: <what> not found" / "is not valid JSON"."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PepError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PepError(f"{path}: {what} is not valid JSON ({exc}){hint}") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML file, or a PepError naming it: "<path>: <what> not found" / "not valid YAML"."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PepError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PepError(f"{path}: {what} is not valid YAML ({exc})") from None


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
