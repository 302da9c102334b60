"""What an installed ipe holds: every package, and the console's pages, script and style."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

from setuptools import find_namespace_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_and_the_console_files_are_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = setuptools["packages"]["find"]["include"]
    found = set(find_namespace_packages(str(ROOT), include=include))
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ipe").rglob("__init__.py")
    }
    assert on_disk <= found, on_disk - found
    patterns = setuptools["package-data"]["ipe.console"]
    console = ROOT / "ipe" / "console"
    shipped = [
        p for p in console.rglob("*") if p.is_file() and p.suffix in (".html", ".js", ".css")
    ]
    assert shipped
    for path in shipped:
        relative = path.relative_to(console).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
