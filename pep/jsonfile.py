"""Reading and writing the JSON (and YAML) files users hand us or read from us.

Reading: one message naming the file for a missing or malformed one; YAML mappings that give a
key twice are refused (PyYAML lets the last one win silently).

Writing: a stage's outputs go through `StagedOutputs`, so that whatever stops it (an error, an
interrupt, SIGKILL) its outputs either all come from one run or are not there: every file is
written to a temporary name first, and only when all are ready are the old ones removed and the
new ones renamed into place, the completion marker (e.g. metrics/<variant>/val.json) last.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pep.errors import PepError


def read_json(path: str | Path, what: str, hint: str = "") -> Any:
    """The parsed file, or a PepError naming it: "<path>: <what> not found" / "is not valid JSON"."""
    return _read(path, what, json.loads, json.JSONDecodeError, "JSON", hint)


def read_yaml(path: str | Path, what: str) -> Any:
    """The parsed YAML file, or a PepError naming it: "<path>: <what> not found" / "not valid
    YAML" / a key given twice, with both lines."""
    return _read(path, what, load_yaml_unique, yaml.YAMLError, "YAML")


def _read(path, what: str, parse, parse_error: type[Exception], kind: str, hint: str = "") -> Any:
    path = Path(path)
    try:
        return parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PepError(f"{path}: {what} not found") from None
    except DuplicateKeyError as exc:
        raise PepError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError, parse_error) as exc:
        raise PepError(f"{path}: {what} is not valid {kind} ({exc}){hint}") from None


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives one key twice."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: SafeLoader's own error says so
                    break
                if first != line:
                    raise DuplicateKeyError(
                        f"line {line}: key {key!r} is given twice, first on line {first} "
                        "(YAML would silently keep the last one); keep one of them")
        return super().construct_mapping(node, deep)


def load_yaml_unique(text: str) -> Any:
    """yaml.safe_load, but a mapping that gives a key twice raises DuplicateKeyError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """write_json_atomic for any text; the temporary file is the process' own, so that two
    processes writing the same content side by side (Snakemake jobs reading the Snakefile) do
    not trip over each other."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def check_writable(folder: str | Path, command: str) -> None:
    """Make `folder` (and its parents) and prove a file can be created in it, before a stage
    spends its time: a PepError naming the folder otherwise. A test write, not os.access, since
    access() says yes to root on a read-only mount."""
    folder = Path(folder)
    try:
        before = folder.stat() if folder.is_dir() else None
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pep-write-test-"):
            pass
        if before is not None:
            # the test write leaves no trace: Snakemake dates a folder output by its mtime, and a
            # command refused after this check (a smoke run on a trained model) changed nothing
            os.utime(folder, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError as exc:
        raise PepError(f"{folder}: {command} cannot write its outputs here ({exc.strerror or exc}); "
                       "fix the folder's permissions or free space, then run it again") from None


def _process_alive(pid: str) -> bool:
    """Whether the process `pid` (digits from a staged file's name) still runs on this machine."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class StagedOutputs:
    """The output files of one stage run, published together or not at all.

    `outputs` lists every file the stage owns, in the order they are to appear; the last one is
    the run's completion marker. Files not staged by `publish` time are removed (a stale one
    would pair an old result with new ones). Use as a context manager: leaving it with an
    exception discards what was staged and leaves the previous outputs untouched.
    """

    def __init__(self, outputs: list[str | Path], command: str):
        self.outputs = [Path(p) for p in outputs]
        self.command = command
        self._staged: dict[Path, Path] = {}
        for folder in dict.fromkeys(p.parent for p in self.outputs):
            check_writable(folder, command)
        for path in self.outputs:
            # left by a SIGKILLed run of this stage; only its own files, and only those of a dead
            # process: stages writing other files of the folder may be running beside it
            for stale in path.parent.glob(f".{glob.escape(path.name)}.pep-staged-*"):
                if not _process_alive(stale.name.rpartition("-")[2]):
                    stale.unlink(missing_ok=True)

    def __enter__(self) -> "StagedOutputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def temp_path(self, path: str | Path) -> Path:
        """Where to write `path`'s content for now (for writers that want a file name)."""
        path = Path(path)
        if path not in self.outputs:
            raise ValueError(f"{path} is not one of this stage's outputs")
        tmp = path.with_name(f".{path.name}.pep-staged-{os.getpid()}")
        self._staged[path] = tmp
        return tmp

    def staged(self, path: str | Path) -> Path:
        """The temporary file already written for `path`."""
        return self._staged[Path(path)]

    def write_text(self, path: str | Path, text: str) -> None:
        tmp = self.temp_path(path)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def write_json(self, path: str | Path, obj: Any, indent: int | None = 2) -> None:
        self.write_text(path, json.dumps(obj, indent=indent) + ("\n" if indent else ""))

    def publish(self) -> None:
        """Remove the previous outputs, then rename the staged files into place in order."""
        for path in self.outputs:
            path.unlink(missing_ok=True)
        for path in self.outputs:
            if path in self._staged:
                os.replace(self._staged.pop(path), path)

    def discard(self) -> None:
        for tmp in self._staged.values():
            tmp.unlink(missing_ok=True)
        self._staged.clear()


@contextlib.contextmanager
def staged_into(outputs: StagedOutputs | None, paths: list[str | Path], command: str):
    """For a writer that a stage may call with its own StagedOutputs: those `outputs` (the
    stage publishes them with its other files), or, when None, a StagedOutputs of `paths`
    published when the block ends without an error."""
    if outputs is not None:
        yield outputs
        return
    with StagedOutputs(paths, command) as own:
        yield own
        own.publish()
