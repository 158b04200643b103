"""One registry for every named component: spaces, strategies, evaluators, predictors, latency
predictors, proxies and weight-sharing searches.

The same rules hold everywhere:

- a name is lower-case letters, digits and `_ . -`, at most 64 characters; a name holding
  `:` is a `module:attr` reference (`resolve_reference`), never a registered name;
- registering a name again with the same object does nothing; with another object it is an
  error naming where both come from;
- an unknown name raises `UnknownComponentError` (a `KeyError`), whose message is
  `unknown <kind> 'x'; known: a, b, c`;
- `origin(name)` says where a component comes from: `built-in`, `plugin <distribution>
  <version>` (an installed entry point) or `module <module>` (registered by user code).

Plugins: an installed distribution declares entry points in the registry's group
(`nas.spaces`, `nas.strategies`, `nas.evaluators`, `nas.proxies`, ...). They are loaded on
the first listing, or on the first lookup of a name that is not registered yet, so a job that
names only built-in components imports no plugin. An entry point either names the component
itself (registered under the entry point's name) or a module whose import registers
components with the usual decorators. A plugin that fails to load costs one line on stderr
naming the entry point, and the others still load.

This module is the lowest layer (it imports nothing of the project), so every package can use
it; it imports no user code except through `resolve_reference` or an installed entry point.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Packages of this project: a component defined in them is `built-in`.
_PROJECT = ("search_spaces", "predictors", "workers", "nas")
_NAME = re.compile(r"[a-z0-9_.\-]{1,64}")
_IDENTIFIERS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
BUILT_IN = "built-in"
#: The plugin whose entry point is being loaded (its components get its origin).
_loading_plugin: list[str] = []
#: Held while entry points load: a driver thread of `nas serve` looking up a plugin's name
#: waits for the loading another thread started instead of finding the name missing.
_PLUGIN_LOCK = threading.RLock()


class UnknownComponentError(KeyError, ValueError):
    """A name that no registry entry and no plugin provides. A `KeyError` (a lookup), and a
    `ValueError` for callers that validate arguments."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BadReferenceError(ValueError):
    """A `module:attr` reference that cannot be resolved (malformed, no such module, no such
    attribute, or an object of the wrong kind); the message is one line."""



def is_reference(name: Any) -> bool:
    """Whether a component name is a `module:attr` reference rather than a registered name."""
    return isinstance(name, str) and ":" in name


def check_name(kind: str, name: Any) -> str:
    """`name` if it may be registered; ValueError otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{kind} name {name!r} is not valid: use 1 to 64 lower-case letters, "
                         "digits, '_', '.' or '-' (a name with ':' is a module:attr reference)")
    return name


def reference_module(reference: str) -> str:
    """The module part of a well-formed `module:attr` reference; BadReferenceError otherwise."""
    return _split(reference)[0]


def _split(reference: str) -> tuple[str, str]:
    module, sep, attr = reference.partition(":")
    if not sep or not _IDENTIFIERS.fullmatch(module) or not _IDENTIFIERS.fullmatch(attr):
        raise BadReferenceError(f"malformed reference {reference!r}: expected "
                                "'module:attribute' (e.g. 'mymod:MySpace')")
    return module, attr


def resolve_reference(reference: str) -> Any:
    """The object a `module:attr` reference names (`attr` may be dotted: `mod:Cls.method`).

    The module is imported as Python finds it, with the current folder on the path as for
    `uvicorn main:app`. Never `eval`. Raises BadReferenceError with a one-line message."""
    module_name, attr = _split(reference)
    _cwd_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise BadReferenceError(f"cannot import module {module_name!r} of reference "
                                    f"{reference!r}: no module named {exc.name!r}") from None
        raise BadReferenceError(f"module {module_name!r} failed to import: {_one_line(exc)}") \
            from None
    except Exception as exc:  # the user's module raised while importing
        raise BadReferenceError(f"module {module_name!r} failed to import: {_one_line(exc)}") \
            from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadReferenceError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def _cwd_on_path() -> None:
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path and "." not in sys.path:
        sys.path.insert(0, cwd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def a_kind_of(obj: Any) -> str:
    """'a function', 'an int', 'a class' ... for an error message (no repr: it may be long
    or hold an address)."""
    what = "class" if isinstance(obj, type) else type(obj).__name__
    return f"{'an' if what[0] in 'aeiou' else 'a'} {what}"


def origin_of(obj: Any) -> str:
    """`built-in`, the plugin being loaded, or `module <m>` for an object defined in `m`."""
    if _loading_plugin:
        return _loading_plugin[-1]
    module = getattr(obj, "__module__", None) or type(obj).__module__
    if module.split(".")[0] in _PROJECT:
        return BUILT_IN
    return f"module {module}"


class Registry(Generic[T]):
    """Components of one kind by name, with entry-point plugins (see the module docstring).

    `check(name, obj)` validates an object before it is registered (raise TypeError or
    ValueError); `from_entry_point(name, obj)` turns the object an entry point names into the
    registered value (default: the object itself); `defined_by(obj)` is what says where a
    registered value comes from (default: the object itself; a proxy: its function)."""

    def __init__(self, kind: str, group: str, *,
                 check: Callable[[str, Any], None] | None = None,
                 from_entry_point: Callable[[str, Any], T] | None = None,
                 defined_by: Callable[[T], Any] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._from_entry_point = from_entry_point
        self._defined_by = defined_by or (lambda obj: obj)
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._plugins_started = False  # set first: a plugin's own lookups do not recurse
        self._plugins_loaded = False
        #: one line per entry point that failed to load
        self.errors: list[str] = []

    # ---- registering ---------------------------------------------------------------------
    def register(self, name: str, obj: T, *, origin: str | None = None) -> T:
        """Register `obj` as `name`; returns `obj` (so that decorators can use it)."""
        check_name(self.kind, name)
        if self._check is not None:
            self._check(name, obj)
        where = origin or origin_of(self._defined_by(obj))
        if name in self._entries:
            if self._same(self._entries[name], obj):
                return obj
            raise ValueError(f"{self.kind} {name!r} is registered twice: by "
                             f"{self._origins[name]} and by {where}")
        self._entries[name] = obj
        self._origins[name] = where
        return obj

    def decorator(self, name_of: Callable[[Any], str] = lambda cls: cls.name) \
            -> Callable[[Any], Any]:
        """A class decorator registering a class under `name_of(cls)` (its `name`)."""
        def register(cls: Any) -> Any:
            name = name_of(cls)
            if not name:
                raise ValueError(f"{cls.__name__} has no name")
            return self.register(name, cls)
        return register

    @staticmethod
    def _same(old: Any, new: Any) -> bool:
        """The same object, or the same class imported twice (a module run as a script and
        imported, or reloaded): same module and qualified name."""
        if old is new or old == new:
            return True
        return isinstance(old, type) and isinstance(new, type) and \
            (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)

    def unregister(self, name: str) -> None:
        """Remove a name (tests, and user code replacing its own component)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def snapshot(self) -> tuple[dict[str, T], dict[str, str]]:
        return dict(self._entries), dict(self._origins)

    def restore(self, snapshot: tuple[dict[str, T], dict[str, str]]) -> None:
        self._entries, self._origins = dict(snapshot[0]), dict(snapshot[1])

    # ---- looking up ----------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The component registered as `name`; UnknownComponentError otherwise."""
        if name not in self._entries:
            self.load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """Every registered name, plugins included, sorted."""
        self.load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def origin(self, name: str) -> str:
        """Where `name` comes from: `built-in`, `plugin <dist> <version>` or `module <m>`."""
        self.get(name)
        return self._origins[name]

    # ---- plugins ---------------------------------------------------------------------------
    def load_plugins(self) -> None:
        """Load this registry's entry points once; a broken one costs one line on stderr."""
        if self._plugins_loaded:
            return
        with _PLUGIN_LOCK:
            if self._plugins_started:
                return
            self._plugins_started = True
            for entry_point in importlib.metadata.entry_points(group=self.group):
                try:
                    self._load(entry_point)
                except Exception as exc:  # a broken plugin must not hide the others
                    line = (f"plugin entry point {self.group} {entry_point.name!r} "
                            f"({entry_point.value}{_dist_label(entry_point)}) failed to load: "
                            f"{_one_line(exc)}")
                    self.errors.append(line)
                    print(f"warning: {line}", file=sys.stderr)
            self._plugins_loaded = True

    def _load(self, entry_point: importlib.metadata.EntryPoint) -> None:
        dist = entry_point.dist
        origin = f"plugin {dist.name} {dist.version}" if dist is not None else \
            f"plugin {entry_point.value}"
        with _plugin(origin):
            obj = entry_point.load()
            if entry_point.attr is None and type(obj).__name__ == "module":
                return  # a module whose import registered its components
            if self._from_entry_point is not None:
                obj = self._from_entry_point(entry_point.name, obj)
            self.register(entry_point.name, obj, origin=origin)


@contextlib.contextmanager
def _plugin(origin: str) -> Iterator[None]:
    _loading_plugin.append(origin)
    try:
        yield
    finally:
        _loading_plugin.pop()


def _dist_label(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    return f", {dist.name} {dist.version}" if dist is not None else ""


def check_class(base: type, kind: str) -> Callable[[str, Any], None]:
    """A `check` for registries of classes: a subclass of `base` whose `name` is the name."""
    def check(name: str, obj: Any) -> None:
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise TypeError(f"{kind} {name!r}: {obj!r} is not a {base.__name__} subclass")
        if getattr(obj, "name", name) != name:
            raise ValueError(f"{kind} {name!r}: class {obj.__name__} is named {obj.name!r}")
    return check
