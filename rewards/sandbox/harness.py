"""The code reward's test harness: a program that runs in the sandbox as `__main__`.

`rewards.code` sends this file's source to the sandbox with a payload in `__sandbox_data__` (a
marshalled dict of strings: program, tests, entry_point, nonce); see `rewards.code` for what it
guards against. It imports only what is already loaded in the sandbox or cheap: json and traceback
(each pulls in `re`) cost about 8 ms of a run, so exceptions are printed by the interpreter's
built-in hook. Imported elsewhere (by linters, coverage, `rewards.code` for its path), it only
defines its functions.
"""

import builtins as _builtins, marshal as _marshal, os as _os, sys as _sys, threading as _threading


def _strict_helpers(_type=type, _isinstance=isinstance, _len=len, _bool=bool, _zip=zip, _all=all,
                    _TypeError=TypeError, _getattr=getattr):
    """Comparison helpers bound to builtins captured before the candidate ran."""
    import operator as _op
    _scalars = (int, float, complex, str, bytes, bool, type(None), range)
    _bases = (int, float, complex, str, bytes, list, tuple, dict, set, frozenset)
    _exact = {int: int.__int__, float: float.__float__, complex: lambda v: complex.__complex__(v),
              str: str.__str__, bytes: lambda v: bytes.__getitem__(v, slice(None)),
              list: list.copy, tuple: lambda v: tuple.__getitem__(v, slice(None)),
              dict: dict.copy, set: set.copy, frozenset: lambda v: frozenset(set.union(set(), v))}
    _ops = {"==": _op.eq, "!=": _op.ne, "<": _op.lt, "<=": _op.le, ">": _op.gt, ">=": _op.ge,
            "in": lambda a, b: _op.contains(b, a), "not in": lambda a, b: not _op.contains(b, a)}
    _views = (type({}.keys()), type({}.values()), type({}.items()))
    _missing = object()

    def plain(v, depth=0):
        """v as plain builtin data, or _missing when it is something else."""
        t = _type(v)
        if t in _scalars:
            return v
        if t in (list, tuple, set, frozenset) or t in _views:
            items = [plain(x, depth + 1) for x in v]
            if any(x is _missing for x in items):
                return _missing
            return v if t in _views else t(items) if t is not list else items
        if t is dict:
            pairs = [(plain(k, depth + 1), plain(x, depth + 1)) for k, x in dict.items(v)]
            if any(k is _missing or x is _missing for k, x in pairs):
                return _missing
            return dict(pairs)
        for base in _bases:
            if _isinstance(v, base):
                return plain(_exact[base](v), depth + 1)
        if _getattr(t, "__module__", "").split(".")[0] == "numpy" and _getattr(v, "tolist", None) is not None:
            converted = v.tolist()
            return _missing if _type(converted).__module__ == "numpy" else plain(converted, depth + 1)
        return _missing

    def cmp(ops, *operands):
        values = [plain(x) for x in operands]
        for i, op in enumerate(ops):
            a, b = values[i], values[i + 1]
            if a is _missing and b is _missing:
                ok = _ops[op](operands[i], operands[i + 1])
            elif a is _missing or b is _missing:
                raise _TypeError(f"test compared plain data with a {_type(operands[i] if a is _missing else operands[i + 1]).__name__}")
            else:
                ok = _ops[op](a, b)
            if not ok:
                return False
        return True

    def truth(v):
        p = plain(v)
        if p is _missing:
            raise _TypeError(f"assert on a {_type(v).__name__}, not plain data")
        return _bool(p)

    return cmp, truth


def _restore(clean_builtins, modules):
    """Undo what the candidate's top level may have done to the tests' environment: tracing and
    profiling hooks, builtins, and the attributes of every module loaded before it ran."""
    _sys.settrace(None)
    _sys.setprofile(None)
    _threading.settrace(None)
    _threading.setprofile(None)
    current_builtins = vars(_builtins)
    for name in [k for k in current_builtins if k not in clean_builtins]:
        del current_builtins[name]
    current_builtins.update(clean_builtins)
    for name, (module, saved) in modules.items():
        _sys.modules[name] = module
        current = vars(module)
        for key, value in saved.items():
            if current.get(key, _restore_missing) is not value:
                current[key] = value


def _run(data):
    payload = _marshal.loads(data)
    token = b"PASS " + payload.pop("nonce").encode()
    del data
    write, exit_, print_exception = _os.write, _os._exit, _sys.__excepthook__
    restore = _restore  # held before the candidate runs, like the calls above
    cmp, truth = _strict_helpers()

    def finish(kind, exc=None):
        if exc is not None:
            try:
                print_exception(type(exc), exc, exc.__traceback__)
            except BaseException:
                pass
        try:
            _sys.stdout.flush()
            _sys.stderr.flush()
        except BaseException:
            pass
        if kind == "pass":
            write(4, token)
            exit_(0)
        write(4, b"FAIL " + kind.encode())
        exit_(1)

    try:
        tests = compile(payload["tests"], "<tests>", "exec")
        candidate = compile(payload["program"], "<candidate>", "exec")
    except BaseException as exc:
        finish("syntax", exc)
    clean_builtins = dict(vars(_builtins))
    modules = {name: (m, dict(vars(m))) for name, m in list(_sys.modules.items()) if m is not None}
    main = type(_sys)("__main__")
    _sys.modules["__main__"] = main
    try:
        exec(candidate, main.__dict__)
    except SystemExit:
        finish("exit", None)
    except BaseException as exc:
        finish("candidate_error", exc)
    restore(clean_builtins, modules)
    entry = payload.get("entry_point")
    names = {k: v for k, v in main.__dict__.items()
             if not (k.startswith("__") and k.endswith("__")) and (k not in clean_builtins or k == entry)}
    test_globals = {**names, "__name__": "__main__", "__builtins__": dict(clean_builtins),
                    "__sbx_cmp__": cmp, "__sbx_truth__": truth}
    try:
        exec(tests, test_globals)
    except AssertionError as exc:
        finish("assertion", exc)
    except SystemExit:
        finish("exit")
    except BaseException as exc:
        finish("test_error", exc)
    finish("pass")


_restore_missing = object()
if __name__ == "__main__":
    _run(globals().pop("__sandbox_data__"))
