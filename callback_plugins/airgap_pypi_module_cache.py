"""Keep the module payloads Ansible builds for the hosts between runs, keyed by everything they are built from.

For every module a run uses, ansible-core builds a payload (AnsiballZ: the module and the module_utils it imports,
found by parsing their sources) once per run, in a cache directory inside the run's own temporary directory, which
goes away when the run ends. On one host's idempotent re-run of site.yml that rebuilding was about 30 % of the
controller's CPU. This callback points that per-run directory at a directory that outlives the run, one per key:

    key = sha256(Python version, ansible-core's version and place, the `ansible` package's version (the
                 collections), and the path, size and modification time of every file under the roles path's
                 library/ and module_utils/ directories, the module and module_utils paths, and the collections
                 paths' plugins/modules and plugins/module_utils)

so a changed module or module_utils file, another ansible-core or another Python gives another directory, never a
stale payload. The directory is ``$AIRGAP_PYPI_MODULE_CACHE`` (default ``~/.cache/airgap-pypi/ansiballz``); it must
be a real directory owned by the user running Ansible and writable by no one else (the payloads are pickles, and
loading a pickle runs code), otherwise the run goes on without it and says why. ``AIRGAP_PYPI_MODULE_CACHE=off``
turns it off. The newest KEEP keys are kept; older ones are removed.

It relies on where ansible-core keeps that per-run directory (``<local tmp>/ansiballz_cache``): should a later
ansible-core move it, the link is simply never read and runs are as fast as without it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

from ansible import constants as C
from ansible import release
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: airgap_pypi_module_cache
    type: aggregate
    short_description: reuse the module payloads ansible-core built in earlier runs, keyed by their sources
    description:
      - Points ansible-core's per-run module payload cache at a directory that outlives the run, one directory per
        key (Python, ansible-core and collections versions, and the path, size and time of every module and
        module_utils source file), so a re-run does not parse and zip the same modules again.
      - The directory is AIRGAP_PYPI_MODULE_CACHE (default ~/.cache/airgap-pypi/ansiballz); "off" disables it.
    requirements:
      - enable with callbacks_enabled (ansible.cfg of airgap-pypi does)
"""

KEEP = 4  # keys (ansible-core and module versions) kept; a key's directory holds a few MB
SOURCE_DIRS = ("library", "module_utils")
COLLECTION_DIRS = ("plugins/modules", "plugins/module_utils")
MAX_FILES = 200_000  # a roles or collections path larger than this is not a module tree: no cache


class CacheRefused(Exception):
    """The cache directory cannot be trusted or used; the message says why."""


def _dirs(value: object) -> list[Path]:
    """A configured path list (a list or an os.pathsep string) as existing directories."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(os.pathsep)
    return [Path(str(item)).expanduser() for item in items if str(item) and Path(str(item)).expanduser().is_dir()]


def source_dirs(roles: Iterable[Path], modules: Iterable[Path], collections: Iterable[Path]) -> Iterator[Path]:
    """Every directory whose files can end up in a module payload."""
    for root in roles:
        for role in sorted(root.iterdir()):
            for name in SOURCE_DIRS:
                if (role / name).is_dir():
                    yield role / name
    yield from modules
    for root in collections:
        base = root / "ansible_collections" if (root / "ansible_collections").is_dir() else root
        for namespace in sorted(p for p in base.iterdir() if p.is_dir()):
            for collection in sorted(p for p in namespace.iterdir() if p.is_dir()):
                for name in COLLECTION_DIRS:
                    if (collection / name).is_dir():
                        yield collection / name


def cache_key(dirs: Iterable[Path]) -> str:
    """sha256 over the interpreter, ansible-core, the collections package and every source file's path, size and
    modification time (a stat is enough: an edited file gets a new time, and hashing thousands of collection files
    on every run would cost what the cache saves)."""
    digest = hashlib.sha256()
    try:
        collections_version = metadata.version("ansible")
    except metadata.PackageNotFoundError:
        collections_version = "-"
    for part in (sys.version, release.__version__, str(Path(release.__file__).parent), collections_version):
        digest.update(part.encode() + b"\0")
    count = 0
    for top in dirs:
        for folder, subdirs, files in os.walk(top):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for name in sorted(files):
                path = Path(folder, name)
                info = path.lstat()
                count += 1
                if count > MAX_FILES:
                    raise CacheRefused(f"more than {MAX_FILES} module source files under {top}")
                digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:32]


def _trusted_dir(path: Path) -> None:
    """Create path (mode 0700) if missing; refuse a link, another owner or write access for others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise CacheRefused(f"{path} is not a directory (a link is not followed)")
    if info.st_uid != os.geteuid():
        raise CacheRefused(f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheRefused(f"{path} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): chmod go-w it")


def prune(root: Path, keep: int = KEEP) -> None:
    """Remove all but the `keep` most recently used key directories (never a link: only what this plugin made)."""
    entries = []
    for entry in root.iterdir():
        info = os.lstat(entry)
        if stat.S_ISDIR(info.st_mode) and len(entry.name) == 32:
            entries.append((info.st_mtime, entry))
    for _, entry in sorted(entries, reverse=True)[keep:]:
        shutil.rmtree(entry, ignore_errors=True)


def link_run_cache(run_tmp: Path, root: Path, key: str) -> Path:
    """Make <run_tmp>/ansiballz_cache a link to root/key; returns root/key. run_tmp is this run's own directory."""
    _trusted_dir(root)
    target = root / key
    _trusted_dir(target)
    os.utime(target)  # most recently used: prune() keeps it
    link = run_tmp / "ansiballz_cache"
    if os.path.lexists(link):
        raise CacheRefused(f"{link} exists already: ansible-core built a payload before the callback was loaded")
    link.symlink_to(target)
    prune(root)
    return target


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "airgap_pypi_module_cache"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        setting = os.environ.get("AIRGAP_PYPI_MODULE_CACHE", "~/.cache/airgap-pypi/ansiballz")
        if setting.strip().lower() in ("", "off", "0", "false", "no"):
            return
        started = time.monotonic()
        try:
            dirs = source_dirs(
                [*_dirs(C.DEFAULT_ROLES_PATH), Path(__file__).resolve().parent.parent / "roles"],
                _dirs(C.DEFAULT_MODULE_PATH) + _dirs(C.DEFAULT_MODULE_UTILS_PATH),
                [*_dirs(C.COLLECTIONS_PATHS), *(Path(p) for p in sys.path if Path(p, "ansible_collections").is_dir())],
            )
            target = link_run_cache(Path(C.DEFAULT_LOCAL_TMP), Path(setting).expanduser(), cache_key(dirs))
        except (OSError, CacheRefused) as error:
            self._display.warning(f"airgap_pypi_module_cache: not used, modules are built as usual: {error}")
            return
        self._display.vvv(f"airgap_pypi_module_cache: {target} ({time.monotonic() - started:.2f} s)")
