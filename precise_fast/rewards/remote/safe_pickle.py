"""Decode pickled replies of the paper's reward servers without running any code.

``pickle.loads`` on network bytes executes whatever the sender wants: every class,
function or ``__reduce__`` callable in a pickle is looked up by name through
``Unpickler.find_class`` and then called. The paper's GenEval server
(Tencent-Hunyuan/Precise ``precise_sde/rewards/servers/geneval/app.py``) answers with
``pickle.dumps`` of a dict of Python lists of floats and a dict of such lists, which
pickles to opcodes alone (protocols 2-5 build dicts, lists, tuples, strings, bytes,
numbers, booleans and None directly). So this unpickler admits no global at all except
the two set constructors that protocols < 4 need for sets and, for bytes under protocols
< 3, a latin-1-only stand-in for ``_codecs.encode``; anything else is refused with
:class:`UnsafePickleError` before it is called. Persistent ids are refused too (the
stdlib default). The reply size is capped by the HTTP layer before decoding.
"""

from __future__ import annotations

import io
import pickle

from .http import ResponseContractError

# Harmless constructors a plain-container pickle may name (sets under protocols 0-3).
_ALLOWED_GLOBALS = frozenset({("builtins", "set"), ("builtins", "frozenset")})

PLAIN_TYPES = (dict, list, tuple, set, frozenset, str, bytes, int, float, bool, type(None))


class UnsafePickleError(ResponseContractError):
    """A pickle that names something other than plain containers, numbers, strings or bytes."""


def _latin1_bytes(text, encoding="latin1"):
    """What protocols 0-2 call to rebuild ``bytes``; any other use is refused."""
    if not isinstance(text, str) or encoding != "latin1":
        raise UnsafePickleError("refused _codecs.encode with anything but (str, 'latin1')")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "__builtin__":  # protocols < 3 write Python 2 module names
            module = "builtins"
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise UnsafePickleError(
            f"refused to unpickle {module}.{name}: replies may only hold plain containers, numbers, strings and bytes"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refused a pickle with persistent ids")


def _check_plain(value, depth: int = 0) -> None:
    """Belt and braces: the decoded tree holds plain types only."""
    if depth > 64:
        raise UnsafePickleError("pickle nests deeper than 64 levels")
    if not isinstance(value, PLAIN_TYPES) or type(value) not in PLAIN_TYPES:
        raise UnsafePickleError(f"pickle holds a {type(value).__name__}, not a plain container or scalar")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, depth + 1)
            _check_plain(v, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _check_plain(v, depth + 1)


def safe_loads(data: bytes):
    """``pickle.loads`` restricted to plain data; raises :class:`UnsafePickleError` otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"safe_loads expects bytes, got {type(data).__name__}")
    try:
        value = _RestrictedUnpickler(io.BytesIO(bytes(data))).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError,
            RecursionError, AttributeError, UnicodeDecodeError) as exc:
        raise ResponseContractError(f"body is not a valid pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(value)
    return value
