"""The wheelhouse behind ``GET /dist/``: punchd's own wheel and every wheel it needs.

``install.sh`` installs with ``pip install --no-index --find-links SERVER/dist/``, so a
new host needs nothing but this server: no PyPI, no proxy. The wheelhouse is made
from the code this server runs, once per version, into ``DATA_DIR/dist/VERSION``:

- punchd itself: its installed metadata and, for an editable install, the files of
  the checkout it runs (:func:`build_own_wheel`); a punchd installed from a wheel (a
  server itself installed by install.sh) is repacked like the rest.
- its dependencies, closed over their own requirements and extras: repacked from the
  distributions installed next to this server (:func:`repack`), which is the one copy
  known to be here offline. A repacked wheel keeps its original tags, so a binary
  one (PyNaCl, psycopg-binary) serves hosts of the server's Python and platform only:
  a host of another Python needs ``--dist DIR`` with wheels for it.

Request paths are hostile: :func:`is_wheel_name` admits only a strict wheel file name,
and only a name listed in the directory is ever opened.
"""

from __future__ import annotations

import base64
import hashlib
import html
import importlib.metadata as md
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path

import trio
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from punchd import __version__
from punchd.errors import ConfigError, DistUnavailable

log = logging.getLogger("signal_server.dist")

# name-version(-build)?-python-abi-platform.whl (PEP 427 / the binary distribution
# format spec), each part its escaped form: no "/", no "-" inside a part, no leading dot.
_WHEEL_NAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9_.]*[A-Za-z0-9])?-[A-Za-z0-9_.!+]+(?:-[0-9][A-Za-z0-9_]*)?"
    r"-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$")
COMPLETE = ".complete"  # written last: a directory without it is a build that died
# The files of an installed dist-info that describe the installation, not the wheel.
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
# Our packages, as pyproject.toml's [tool.setuptools.packages.find] includes them.
PACKAGES = ("punchd", "signal_server", "meshdns")


def is_wheel_name(name: str) -> bool:
    # fullmatch: "$" alone would admit a trailing newline.
    return len(name) <= 255 and _WHEEL_NAME.fullmatch(name) is not None and ".." not in name


def wheel_filename(name: str, version: str, tags: Iterable[str]) -> str:
    """The file name of a wheel: escaped name and version, and the compressed tag set
    (``cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64``) of its WHEEL tags."""
    parts: list[list[str]] = [[], [], []]
    for tag in tags:
        for i, piece in enumerate(tag.strip().split("-")[:3]):
            if piece not in parts[i]:
                parts[i].append(piece)
    if not all(parts):
        raise ConfigError(f"{name} {version}: its WHEEL file has no Tag")
    escaped = re.sub(r"[-_.]+", "_", name)
    return f"{escaped}-{version.replace('-', '_')}-" + "-".join(".".join(p) for p in parts)


def index_html(names: Iterable[str]) -> str:
    """The page pip's ``--find-links URL`` reads: one link per wheel."""
    links = "\n".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>'
                      for n in sorted(names))
    return f"<!DOCTYPE html>\n<html><body>\n{links}\n</body></html>\n"


def requirement_closure(root: str) -> list[md.Distribution]:
    """The installed distributions ``root`` needs at run time, extras included (not
    ``root`` itself): ``hypercorn[trio]`` brings trio's, ``psycopg[binary]`` brings
    psycopg-binary. A requirement not installed here is an error naming it."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    base_env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        try:
            dist = installed(name)
        except md.PackageNotFoundError as exc:
            raise DistUnavailable(f"{name} is needed by {root} but not installed here") from exc
        if canonicalize_name(name) != canonicalize_name(root):
            seen[canonicalize_name(name)] = dist
        for text in dist.requires or []:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                continue  # a dependency's own metadata we cannot read is not ours to fix
            wanted = any(req.marker is None or req.marker.evaluate({**base_env, "extra": e})
                         for e in ("", *extras))
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def installed(name: str) -> md.Distribution:
    """The installed distribution ``name``, preferring one installed from a wheel: an
    editable install's build leaves a ``NAME.egg-info`` in the checkout, which shadows
    the real ``.dist-info`` when the checkout is on sys.path."""
    found = [d for d in md.distributions(name=name)]
    for dist in found:
        if any(f.name == "WHEEL" for f in dist.files or []):
            return dist
    if not found:
        raise md.PackageNotFoundError(name)
    return found[0]


def repack(dist: md.Distribution, out_dir: Path, *, tree: Path | None = None) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists.

    Files outside site-packages (console scripts, headers) are left out: pip makes the
    scripts again from entry_points.txt. RECORD is written anew with the hashes of what
    went in, as the wheel format requires. ``tree``: an editable install's checkout,
    whose packages replace the ``__editable__`` hook files.
    """
    name, version = dist.metadata["Name"], dist.version
    info = next((f for f in dist.files or [] if f.name == "WHEEL"
                 and f.parent.name.endswith(".dist-info")), None)
    if info is None:
        raise DistUnavailable(f"{name} {version} is not installed from a wheel (no WHEEL "
                              "file): give --dist with its wheel")
    tags = [ln.split(":", 1)[1] for ln in info.read_text().splitlines()
            if ln.startswith("Tag:")]
    filename = wheel_filename(name, version, tags) + ".whl"
    info_dir = str(info.parent)
    members: list[tuple[str, Path]] = []
    for f in dist.files or []:
        arc = f.as_posix()
        if arc.startswith("..") or "__pycache__" in f.parts or arc.endswith(".pyc") \
                or (str(f.parent) == info_dir and f.name in _INSTALL_ONLY) \
                or (tree is not None and f.name.startswith("__editable__")):
            continue
        members.append((arc, Path(str(dist.locate_file(f)))))
    if tree is not None:
        members += _tree_files(tree)
    records: list[str] = []
    target = out_dir / filename
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, path in members:
            data = path.read_bytes()
            zf.writestr(arc, data)
            records.append(_record_line(arc, data))
        record = f"{info_dir}/RECORD"
        zf.writestr(record, "\n".join([*records, f"{record},,"]) + "\n")
    return target


def source_tree() -> Path | None:
    """The checkout this server runs from, if it runs from one (an editable install)."""
    import punchd

    root = Path(punchd.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "signal_server").is_dir() \
        else None


def _tree_files(tree: Path) -> list[tuple[str, Path]]:
    """(archive name, file) of every file of our packages in a checkout."""
    files: list[tuple[str, Path]] = []
    for package in PACKAGES:
        for path in sorted((tree / package).rglob("*")):
            rel = path.relative_to(tree)
            if path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc":
                files.append((rel.as_posix(), path))
    return files


def build_own_wheel(out_dir: Path) -> Path:
    """punchd's wheel: its installed metadata (METADATA, entry_points.txt, WHEEL) with,
    for an editable install, the checkout's packages in place of the editable hook.

    Not ``pip wheel``: offline, pip can only use the setuptools installed here, and an
    older one than pyproject.toml's build requirement refuses its metadata.
    """
    return repack(installed("punchd"), out_dir, tree=source_tree())
def build_wheelhouse(root: Path) -> Path:
    """``root/VERSION`` with every wheel install.sh needs; built once per version."""
    final = root / __version__
    if (final / COMPLETE).exists():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{__version__}-", dir=root))
    except OSError as exc:
        raise DistUnavailable(f"cannot build the wheelhouse in {root}: {exc}") from exc
    try:
        build_own_wheel(work)
        for dist in requirement_closure("punchd"):
            repack(dist, work)
        (work / COMPLETE).write_text(__version__ + "\n")
        if final.exists():  # a build that died half way: ours replaces it
            shutil.rmtree(final)
        os.replace(work, final)
    except OSError as exc:
        raise DistUnavailable(f"cannot build the wheelhouse in {root}: {exc}") from exc
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return final


class Wheelhouse:
    """The directory ``/dist/`` serves: given (``--dist DIR``), or built on first use.

    Built on the first request that needs it rather than at start: a build takes
    seconds of CPU, and most servers (every test's) are never asked for it.
    """

    def __init__(self, *, given: Path | None = None, build_root: Path | None = None) -> None:
        if (given is None) == (build_root is None):
            raise ValueError("a Wheelhouse is either given or built")
        self._given = given
        self._build_root = build_root
        self._dir: Path | None = given
        # A failed build is remembered: anyone may ask for /dist/, and each asking must
        # not cost another build. A restart (after fixing the cause) tries again.
        self._failure: DistUnavailable | None = None
        self._lock = trio.Lock()

    async def directory(self) -> Path:
        async with self._lock:  # one build at a time; the rest wait for it
            if self._failure is not None:
                raise self._failure
            if self._dir is None:
                assert self._build_root is not None
                start = time.monotonic()
                try:
                    self._dir = await trio.to_thread.run_sync(build_wheelhouse,
                                                              self._build_root)
                except DistUnavailable as exc:
                    log.error("no wheelhouse for install.sh: %s", exc)
                    self._failure = exc
                    raise
                log.info("wheelhouse %s ready in %.1f s", self._dir, time.monotonic() - start)
            return self._dir

    async def names(self) -> list[str]:
        directory = await self.directory()
        try:
            return sorted(n for n in os.listdir(directory) if is_wheel_name(n))
        except OSError as exc:
            raise DistUnavailable(f"cannot list {directory}: {exc.strerror}") from exc

    async def path(self, name: str) -> Path | None:
        """The file of wheel ``name``, or None: only a listed, strictly named file."""
        if not is_wheel_name(name):
            return None
        if name not in await self.names():
            return None
        return (await self.directory()) / name
