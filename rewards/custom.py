"""Load user reward functions from `"pkg.module:fn"` or `"path/to/file.py:fn"` specs.

A file path may be absolute or relative to the working directory. A spec may start with `name=`
to register the function under another name (`"exact=my_rewards.code:passes_tests"`); otherwise
it is registered under its function name.
A loaded function must take one positional argument: a Sample, or a list of Samples for a batched
reward (mark it with `rewards.registry.batched`); it may be `async`.

Registration is per process: call `load_custom_rewards` in every process that scores samples.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

from rewards.registry import reward

_SPEC = re.compile(r"(?:(?P<name>[A-Za-z_][\w-]*)=)?(?P<source>.+):(?P<attr>[^:]*)")


class RewardLoadError(ValueError):
    """A custom reward spec could not be loaded; the message names the spec."""


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or "\\" in source


def _import_error(spec: str, target: object, exc: Exception) -> RewardLoadError:
    return RewardLoadError(f"custom reward {spec!r}: importing {target} raised {type(exc).__name__}: {exc}")


def _import_file(spec: str, source: str) -> ModuleType:
    path = Path(source).resolve()  # a relative path is relative to the working directory
    if not path.is_file():
        raise RewardLoadError(f"custom reward {spec!r}: file not found: {path}")
    # A stable module name per path: loading the same file twice reuses the module (and its
    # functions, so re-registration is a no-op), and dataclasses/pickle can find it in sys.modules.
    name = f"_custom_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None:
        raise RewardLoadError(f"custom reward {spec!r}: {path} is not a Python source file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise _import_error(spec, path, exc) from exc
    return module


def _import_module(spec: str, source: str) -> ModuleType:
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as exc:
        # Distinguish the module itself missing from a module that imports something missing.
        if exc.name is not None and (source == exc.name or source.startswith(exc.name + ".")):
            raise RewardLoadError(f"custom reward {spec!r}: module {source!r} not found") from exc
        raise _import_error(spec, source, exc) from exc
    except Exception as exc:
        raise _import_error(spec, source, exc) from exc


def _binds(signature: inspect.Signature, n_args: int) -> bool:
    try:
        signature.bind(*[None] * n_args)
    except TypeError:
        return False
    return True


def _check_signature(spec: str, fn: object) -> None:
    """The function must be callable with exactly one positional argument (the Sample)."""
    if not callable(fn):
        raise RewardLoadError(f"custom reward {spec!r}: {fn!r} is not callable")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise RewardLoadError(f"custom reward {spec!r}: cannot inspect its signature: {exc}") from exc
    if not _binds(signature, 1) or _binds(signature, 2):
        raise RewardLoadError(
            f"custom reward {spec!r}: signature {signature} must accept exactly one positional argument "
            "(the sample)"
        )


def load_custom_reward(spec: str) -> str:
    """Import, check and register the reward named by `spec`; return its registered name."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None or not match["attr"]:
        raise RewardLoadError(f"custom reward {spec!r}: expected 'module:function' or 'file.py:function'")
    source, attr = match["source"], match["attr"]
    module = _import_file(spec, source) if _is_file(source) else _import_module(spec, source)
    if not hasattr(module, attr):
        raise RewardLoadError(f"custom reward {spec!r}: {source} has no attribute {attr!r}")
    fn = getattr(module, attr)
    _check_signature(spec, fn)
    name = match["name"] or attr
    try:
        reward(name)(fn)
    except ValueError as exc:
        raise RewardLoadError(f"custom reward {spec!r}: {exc}") from exc
    return name


def pin_spec(spec: str) -> str:
    """`spec` with a relative file path made absolute, so another process (a reward actor, whose
    working directory may differ) loads the same file; module specs are returned unchanged."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None or not _is_file(match["source"]):
        return spec
    prefix = f"{match['name']}=" if match["name"] else ""
    return f"{prefix}{Path(match['source']).resolve()}:{match['attr']}"


def load_custom_rewards(specs: list[str]) -> list[str]:
    """Load every spec (see the module docstring); return the registered names, in order."""
    return [load_custom_reward(spec) for spec in specs]
