"""The pins install anywhere: every line of constraints.txt is `name==version` (no local paths)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_constraints_are_plain_pins() -> None:
    lines = [ln.strip() for ln in (REPO / "constraints.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [ln for ln in pins if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z0-9,_\-]+\])?==[A-Za-z0-9_.+\-!]+", ln)]
    assert not bad, f"constraints.txt must hold only name==version pins: {bad}"


def test_every_declared_dependency_is_pinned() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    pinned = {ln.split("==")[0].lower().replace("_", "-") for ln in (REPO / "constraints.txt").read_text().split()}
    for dep in declared:
        name = re.split(r"[\[<>=~ ]", dep, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{name} is declared in pyproject.toml but not pinned in constraints.txt"
