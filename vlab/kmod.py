"""Kernel modules: which .ko files, in which order, a set of drivers needs (from modules.dep)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class ModuleNotFound(Exception):
    def __init__(self, name: str, release: str) -> None:
        super().__init__(f"kernel {release} has no module {name}")
        self.name = name


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
        for line in (modules_dir / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[path] = tuple(rest.split())
            by_name[_norm(Path(path).name.split(".ko")[0])] = path
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
