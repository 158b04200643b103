"""A job's user code: the modules its spec names that live outside installed packages, which
travel to Ray workers in the job's runtime environment (`py_modules`), and their content hash.

Only top-level modules are located (`importlib.util.find_spec` of the first dotted part,
which imports nothing): a reference `pkg.sub:fn` ships the whole folder of `pkg`, since a
worker imports `pkg` before `pkg.sub`. A module found in site-packages or the standard
library is an installed dependency (a plugin, numpy) and is not shipped; neither is one that
belongs to an installed distribution (an editable install such as this project itself):
workers are expected to have those installed, like any other dependency.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import site
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: files that change without the code changing (bytecode caches); left out of the hash and
#: of the package Ray uploads
EXCLUDES = ("__pycache__", "*.pyc")


@dataclass(frozen=True)
class UserCode:
    """The shipped modules of a job: `paths` (top-level module -> its package folder or
    single `.py` file), a sha256 per module and one over all of them."""

    paths: dict[str, str]
    digests: dict[str, str]
    sha256: str

    def record(self) -> dict[str, object]:
        """What the job row stores (`jobs.code`)."""
        return {"sha256": self.sha256, "modules": dict(self.digests)}


class UnshippableModuleError(ValueError):
    """A user module that is neither a package folder nor a single `.py` file."""


def find_user_code(modules: Iterable[str]) -> UserCode | None:
    """The user code among `modules` (dotted names; the current folder is on the path, as
    for `module:attr` references), or None when every one is installed or not found here
    (a missing module is reported by the reference's own import, with its field)."""
    from search_spaces.registry import _cwd_on_path

    _cwd_on_path()
    paths: dict[str, str] = {}
    for top in sorted({name.split(".")[0] for name in modules}):
        path = module_path(top)
        if path is not None:
            paths[top] = str(path)
    if not paths:
        return None
    files = {top: _files(Path(path)) for top, path in paths.items()}
    digests = {top: _digest(found) for top, found in files.items()}
    everything = sorted(item for found in files.values() for item in found)
    return UserCode(paths, digests, _digest(everything))


def module_path(top: str) -> Path | None:
    """The package folder or `.py` file of top-level module `top`, or None when it is not
    user code (installed, standard library, built in) or cannot be found."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if locations:
        if len(locations) != 1:
            raise UnshippableModuleError(f"module {top!r} is a namespace package over "
                                         f"{len(locations)} folders; make it one package")
        path = Path(locations[0])
    elif spec.origin and spec.origin.endswith(".py"):
        path = Path(spec.origin)
    elif spec.origin in (None, "built-in", "frozen"):
        return None
    else:
        path = Path(spec.origin)
        if not _inside(path.resolve(), _installed_roots()):
            raise UnshippableModuleError(f"module {top!r} is {path.name}, not Python source: "
                                         "install it on every worker instead")
    path = path.resolve()
    if _inside(path, _installed_roots()) or top in _installed_top_levels():
        return None
    return path


@functools.cache
def _installed_top_levels() -> frozenset[str]:
    """Top-level modules of installed distributions (editable installs too). Cached: reading
    every distribution's metadata takes a few hundred milliseconds."""
    return frozenset(importlib.metadata.packages_distributions())


@functools.cache
def _installed_roots() -> list[Path]:
    """site-packages (system, user, virtualenv) and the standard library folders."""
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib",
                                                     "platlib")}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return [Path(root).resolve() for root in roots if root]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _files(path: Path) -> list[tuple[str, bytes]]:
    """(path relative to the module's parent folder, content) of every file shipped."""
    if path.is_file():
        return [(path.name, path.read_bytes())]
    found = []
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path.parent)
        if not file.is_file() or "__pycache__" in relative.parts or file.suffix == ".pyc":
            continue
        found.append((relative.as_posix(), file.read_bytes()))
    return found


def _digest(files: Iterable[tuple[str, bytes]]) -> str:
    """sha256 over the files' relative paths and bytes, each length-prefixed so that no
    two different sets of files hash alike."""
    digest = hashlib.sha256()
    for name, data in sorted(files):
        encoded = name.encode()
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def upload(paths: Iterable[str]) -> list[str]:
    """Upload the modules to the connected Ray cluster's object store once (a content-hashed
    package each, as `ray.init(runtime_env={"py_modules": ...})` does for a whole Ray job)
    and return their URIs: a task's or actor's own runtime environment takes URIs only,
    local paths being uploaded by `ray.init` alone, and a serve process runs several jobs on
    one connection."""
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory(prefix="nas-py-modules-") as scratch:
        env = upload_py_modules_if_needed({"py_modules": list(paths), "excludes": list(EXCLUDES)},
                                          include_gitignore=False, scratch_dir=scratch)
    return list(env["py_modules"])


def keep_uploaded(uris: Iterable[str]) -> None:
    """Pin the uploaded packages for another while: Ray keeps a package that no Ray job
    references for 10 minutes after its upload, and tasks started later (a long job, a new
    node) download it again."""
    from ray._private.runtime_env.packaging import pin_runtime_env_uri

    for uri in uris:
        pin_runtime_env_uri(uri)
