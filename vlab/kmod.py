"""Kernel modules: which .ko files, in which order, a set of drivers needs (from modules.dep)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20]")


class ModuleNotFound(Exception):
    def __init__(self, name: str, release: str) -> None:
        super().__init__(f"kernel {release} has no module {name}")
        self.name = name


class BadModulesDep(Exception):
    """modules.dep names something vlab will not copy (the root is untrusted)."""


def _checked(path: str, line_no: int) -> str:
    """A module path as modules.dep may give it: relative, no `..`, a .ko file name."""
    parts = path.split("/")  # a root's modules.dep has ~5000 lines: tests in C, not per char
    if (not path or path[0] == "/" or "" in parts or "." in parts or ".." in parts
            or ".ko" not in parts[-1] or _CONTROL_OR_SPACE.search(path)):
        raise BadModulesDep(f"modules.dep line {line_no} names {path!r}: a module path must "
                            "be relative to the kernel's module folder, without ..")
    return path


def _norm(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    release: str
    deps: dict[str, tuple[str, ...]]  # relative path -> relative paths it needs
    by_name: dict[str, str]  # normalized module name -> relative path
    builtin: frozenset[str]

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleIndex:
        deps: dict[str, tuple[str, ...]] = {}
        by_name: dict[str, str] = {}
        text = (modules_dir / "modules.dep").read_text(errors="replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            path, _, rest = line.partition(":")
            path = _checked(path.strip(), line_no)
            deps[path] = tuple(_checked(dep, line_no) for dep in rest.split())
            by_name[_norm(path.rpartition("/")[2].split(".ko")[0])] = path
        builtin_file = modules_dir / "modules.builtin"
        builtin = frozenset(
            _norm(Path(p).name.split(".ko")[0])
            for p in (builtin_file.read_text().split() if builtin_file.exists() else [])
        )
        return cls(release=modules_dir.name, deps=deps, by_name=by_name, builtin=builtin)

    def load_order(self, names: list[str]) -> list[str]:
        """Relative .ko paths for `names` and everything they need, dependencies first."""
        order: list[str] = []

        def visit(path: str) -> None:
            if path in order:
                return
            if path not in self.deps:
                raise BadModulesDep(f"modules.dep names {path} as a dependency but has no "
                                    "line for it")
            # modules.dep lists a module's needs so that the last one is loaded first.
            for dep in reversed(self.deps[path]):
                visit(dep)
            order.append(path)

        for name in names:
            key = _norm(name)
            if key in self.builtin:
                continue
            if key not in self.by_name:
                raise ModuleNotFound(name, self.release)
            visit(self.by_name[key])
        return order
