"""Kernel modules: which .ko files, in which order, a set of drivers needs (modules.dep and
modules.softdep, as modprobe reads them), for any kernel: Debian's package or a root's own,
its modules plain or compressed (.ko.xz, .ko.zst, .ko.gz)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from vlab.build.cache import read_regular
from vlab.errors import HostError

_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20]")
COMPRESSED = (".xz", ".zst", ".gz")
MAX_MODULE = 64 << 20  # bytes a module may decompress to (the largest in Debian's: ~10 MiB)
MAX_INDEX = 32 << 20  # bytes of modules.dep, .builtin, .softdep, .alias (Debian's: < 2 MiB)


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


def _exists(path: Path) -> bool:
    """There is something at path, a symlink included (which _index then refuses)."""
    return path.is_symlink() or path.exists()


def _index(path: Path) -> str:
    """One of the module folder's index files: a regular file in that folder, bounded
    (cache.read_regular)."""
    try:
        return read_regular(Path(path.name), MAX_INDEX, path.name,
                            within=path.parent).decode(errors="replace")
    except HostError as err:
        raise BadModulesDep(str(err)) from None


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _name(path: str) -> str:
    return _norm(path.rpartition("/")[2].split(".ko")[0])


def plain_path(path: str) -> str:
    """Where a module goes in an initrd: its path without the compression suffix."""
    for suffix in COMPRESSED:
        if path.endswith(".ko" + suffix):
            return path.removesuffix(suffix)
    return path


def _decompressed(path: str, data: bytes) -> bytes | None:
    """At most MAX_MODULE + 1 bytes of the module, decompressed; None if it is plain."""
    if path.endswith(".ko.xz"):
        import lzma

        return lzma.LZMADecompressor().decompress(data, max_length=MAX_MODULE + 1)
    if path.endswith(".ko.zst"):
        import io

        import zstandard

        chunks, size = [], 0
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while size <= MAX_MODULE and (chunk := reader.read(1 << 20)):
                chunks.append(chunk)
                size += len(chunk)
        return b"".join(chunks)
    if path.endswith(".ko.gz"):
        import zlib

        return zlib.decompressobj(wbits=31).decompress(data, MAX_MODULE + 1)
    return None


def plain_bytes(path: str, data: bytes) -> bytes:
    """A module's bytes as insmod hands them to the kernel: decompressed here, so a kernel that
    cannot decompress modules itself (or busybox's insmod, which never asks it to) loads it.
    The module is the root's: its decompressed size is bounded."""
    try:
        out = _decompressed(path, data)
    except Exception as err:  # each decompressor's own error type: the module is corrupt
        raise BadModulesDep(f"{path} cannot be decompressed: {err}") from None
    if out is None:
        return data
    if len(out) > MAX_MODULE:
        raise BadModulesDep(f"{path} decompresses to more than {MAX_MODULE >> 20} MiB")
    return out


@dataclass(frozen=True)
class ModuleIndex:
    release: str
    deps: dict[str, tuple[str, ...]]  # relative path -> relative paths it needs
    by_name: dict[str, str]  # normalized module name -> relative path
    builtin: frozenset[str]
    # normalized name -> (names to load before it, names after it), from modules.softdep
    softdeps: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # plain alias -> module name

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleIndex:
        deps: dict[str, tuple[str, ...]] = {}
        by_name: dict[str, str] = {}
        text = _index(modules_dir / "modules.dep")
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            path, _, rest = line.partition(":")
            path = _checked(path.strip(), line_no)
            deps[path] = tuple(_checked(dep, line_no) for dep in rest.split())
            by_name[_name(path)] = path
        builtin_file = modules_dir / "modules.builtin"
        builtin = frozenset(
            _name(p) for p in (_index(builtin_file).split() if _exists(builtin_file) else []))
        return cls(release=modules_dir.name, deps=deps, by_name=by_name, builtin=builtin,
                   softdeps=_softdeps(modules_dir / "modules.softdep"),
                   aliases=_aliases(modules_dir / "modules.alias"))

    def load_order(self, names: list[str]) -> list[str]:
        """Relative .ko paths for `names` and everything they need, dependencies first."""
        order: list[str] = []

        seen: set[str] = set()

        def soft(name: str) -> None:
            """A softdep is loaded if this kernel has it, as modprobe does; else skipped."""
            key = _norm(name)
            key = key if key in self.by_name else self.aliases.get(key, key)
            if key not in self.builtin and key in self.by_name:
                visit(self.by_name[key])

        def visit(path: str) -> None:
            if path in seen:
                return
            seen.add(path)  # before its softdeps: two modules may name each other
            if path not in self.deps:
                raise BadModulesDep(f"modules.dep names {path} as a dependency but has no "
                                    "line for it")
            pre, post = self.softdeps.get(_name(path), ((), ()))
            for name in pre:
                soft(name)
            # modules.dep lists a module's needs so that the last one is loaded first.
            for dep in reversed(self.deps[path]):
                visit(dep)
            order.append(path)
            for name in post:
                soft(name)

        try:
            for name in names:
                key = _norm(name)
                if key in self.builtin:
                    continue
                if key not in self.by_name:
                    raise ModuleNotFound(name, self.release)
                visit(self.by_name[key])
        except RecursionError:  # the root's modules.dep is untrusted: no crash on a chain
            raise BadModulesDep("modules.dep nests dependencies deeper than any kernel's"
                                ) from None
        return order


def _softdeps(path: Path) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """modules.softdep: `softdep MODULE pre: A B post: C` lines (depmod writes them from the
    modules' own softdep tags); anything else in the file is ignored, as modprobe does."""
    found: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    if not _exists(path):
        return found
    for line in _index(path).splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        pre: list[str] = []
        post: list[str] = []
        into = None
        for word in words[2:]:
            if word in ("pre:", "post:"):
                into = pre if word == "pre:" else post
            elif into is not None and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", word):
                into.append(word)
        old_pre, old_post = found.get(_norm(words[1]), ((), ()))
        found[_norm(words[1])] = (old_pre + tuple(pre), old_post + tuple(post))
    return found


def _aliases(path: Path) -> dict[str, str]:
    """modules.alias's plain names (`alias crc32c crc32c_generic`), the way a softdep names a
    module; the wildcard aliases (device ids) are not needed to load named modules."""
    found: dict[str, str] = {}
    if not _exists(path):
        return found
    for line in _index(path).splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias" and re.fullmatch(r"[A-Za-z0-9_-]+", words[1]):
            found.setdefault(_norm(words[1]), _norm(words[2]))
    return found
