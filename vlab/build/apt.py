"""Debian's archive through apt: which version of a package apt would take, and that package
downloaded and unpacked (files only: nothing of it runs here). The guest kernels, and the
arm64 builds of busybox, shim and GRUB, come this way."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vlab import run
from vlab.errors import HostError
from vlab.scenario.model import Arch

# apt's answer can only change when one of these changes.
APT_STATE = (Path("/var/lib/apt/lists"), Path("/var/cache/apt/pkgcache.bin"),
             Path("/etc/apt/preferences.d"), Path("/etc/apt/sources.list.d"),
             Path("/etc/apt/sources.list"), Path("/etc/apt/preferences"))


def _apt_state() -> str:
    return repr([(str(p), p.stat().st_mtime_ns) for p in APT_STATE if p.exists()])


def name(package: str, arch: Arch) -> str:
    """apt's name of a package of this architecture (vlab runs on amd64: the others carry
    theirs, as apt's multiarch spells it)."""
    return package if arch is Arch.AMD64 else f"{package}:{arch.value}"


def resolve_cached(package: str, cache_dir: Path, follow: str = "") -> tuple[str, str]:
    """resolve(), remembered until apt's lists or configuration change (saves ~1 s warm)."""
    memo = cache_dir / "apt" / f".resolved-{package.replace(':', '_')}.json"
    state = _apt_state()
    try:
        saved = json.loads(memo.read_text())
        if saved["apt_state"] == state:
            return saved["name"], saved["version"]
    except (OSError, ValueError, KeyError):
        pass
    found, version = resolve(package, follow)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"apt_state": state, "name": found, "version": version}))
    return found, version


def resolve(package: str, follow: str = "") -> tuple[str, str]:
    """The concrete package and its candidate version; with `follow` (a name prefix, e.g.
    "linux-image-"), a metapackage's dependency of that name instead of the metapackage."""
    found = package
    if follow:
        deps = run.output(["apt-cache", "depends", "--no-recommends", "--no-suggests", package])
        if m := re.search(rf"Depends: ({re.escape(follow)}\S+)", deps):
            found = m.group(1)
    policy = run.output(["apt-cache", "policy", found])
    m = re.search(r"Candidate: (\S+)", policy)
    if not m or m.group(1) == "(none)":
        _, _, arch = found.partition(":")
        raise HostError(
            f"apt knows no installable version of {found}; fix: "
            + (f"dpkg --add-architecture {arch} && apt-get update (apt fetches {arch} "
               "packages only for architectures dpkg knows; make deps does both)" if arch else
               "run apt-get update (or name an existing package in [kernel] package)")
        )
    return found, m.group(1)


def download(package: str, version: str, into: Path) -> Path:
    """Download one Debian package with apt and unpack it into `into`/unpacked (a package
    is files, never run: no maintainer script of it runs)."""
    run.run(["apt-get", "download", f"{package}={version}"], cwd=into,
            hint="check that apt can reach Debian's archive (apt-get update)")
    debs = list(into.glob("*.deb"))
    unpacked = into / "unpacked"
    run.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
    debs[0].unlink()
    return unpacked
