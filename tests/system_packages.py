"""Debian packages some tests need (SLURM, pdflatex, Chromium), installed where they are missing.

Installing needs root and apt-get; the package lists are fetched only when a package is not
found (a fresh container has none). Under CI (`CI` set) a tool that cannot be had fails its
test; on a workstation the test is skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from typing import Callable

import pytest

APT = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]  # wait for a teammate's apt, do not fail


def apt_install(packages: list[str], ready: Callable[[], bool], timeout: float = 900) -> str | None:
    """`packages` installed unless `ready()` already holds; None when it holds afterwards, else
    why not (not root, no apt-get, the install's own error)."""
    if ready():
        return None
    if shutil.which("apt-get") is None:
        return f"no apt-get to install {' '.join(packages)}"
    if os.geteuid() != 0:
        return f"not root, so no apt-get install {' '.join(packages)}"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*APT, "install", "-y", "--no-install-recommends", *packages]
    try:
        proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode != 0 and re.search(r"Unable to locate package|has no installation candidate",
                                              proc.stderr + proc.stdout):
            subprocess.run([*APT, "update"], capture_output=True, env=env, timeout=timeout)
            proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`{shlex.join(install)}` timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        return f"`{shlex.join(install)}` failed (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}"
    return None if ready() else f"installed {' '.join(packages)}, but what the test needs is still missing"


def require(what: str, packages: list[str], ready: Callable[[], bool]) -> None:
    """Install `packages` for `what` where needed, else fail (CI) or skip (elsewhere)."""
    started = time.monotonic()
    problem = apt_install(packages, ready)
    if problem is not None:
        message = f"no {what}: {problem}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if time.monotonic() - started > 1:
        print(f"installed {' '.join(packages)} in {time.monotonic() - started:.0f} s")
