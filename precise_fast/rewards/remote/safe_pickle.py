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
stdlib default). The reply size is capped by the HTTP layer, and here at ``MAX_PICKLE_BYTES``.

Names are not the only danger: a few hundred bytes can make the decoding itself run for
hours. Memo references (``GET``) let one container appear many times, so a chain of lists
each holding the previous one twice expands to 2**60 items for anything that walks the
value; tuples hash their items on every use as a dict key or set member; integer keys
whose hashes collide make each insertion compare against all earlier ones. So before the
C unpickler sees the bytes, :func:`scan` walks the opcodes once (linear in the size) with
a model of the stack and memo, and refuses a pickle whose decoded value would hold a
container more than once (the expanded tree may not outgrow the opcode count), whose
dict keys or set members are anything but scalars with uncolliding hashes, which writes
memo slots out of order (the unpickler sizes its memo table by the largest), or whose
decoding work (items moved, key bytes compared, set and bytes rebuilds) exceeds
``WORK_PER_BYTE`` steps per byte. The paper's reply (plain lists of floats, dicts with
string keys) passes untouched.
"""

from __future__ import annotations

import io
import pickle
import pickletools

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


# The paper's reply for 64 images is ~3 KB (a few thousand images fit in 1 MiB); the scan
# costs microseconds per opcode (measured 1.5 s for a 1.5 MB reply of 178k opcodes on a
# busy 2-core machine), so 1 MiB bounds it near a second.
MAX_PICKLE_BYTES = 1024 * 1024
WORK_PER_BYTE = 8
_WORK_FLOOR = 4096
# CPython hashes an int as itself modulo this prime, so ints beyond it can be chosen to
# share one hash (k * (2**61 - 1) for every k): a dict of them is built in quadratic time.
_HASH_MODULUS = (1 << 61) - 1
_PUSHES = {
    **dict.fromkeys(("BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"), "int"),
    **dict.fromkeys(("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
                     "BINUNICODE8"), "str"),
    **dict.fromkeys(("BINBYTES", "SHORT_BINBYTES", "BINBYTES8"), "bytes"),
    **dict.fromkeys(("FLOAT", "BINFLOAT"), "float"),
    **dict.fromkeys(("NEWTRUE", "NEWFALSE"), "bool"),
    "NONE": "none", "EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set", "EMPTY_TUPLE": "tuple",
}
_FROM_MARK = {"LIST": "list", "TUPLE": "tuple", "DICT": "dict", "FROZENSET": "frozenset"}
_ACTIVE = -1


class _Node:
    """What the unpickler would build, reduced to its kind, scalar value and items."""

    __slots__ = ("kind", "value", "items", "size")

    def __init__(self, kind: str, value=None, items=None):
        self.kind, self.value, self.items = kind, value, items if items is not None else []
        self.size = None  # the expanded size, once counted; _ACTIVE while its items are counted


class _Scan:
    """One pass over the opcodes with a model of the unpickler's stack and memo."""

    def __init__(self, size: int):
        self.stack: list = []
        self.marks: list[int] = []  # stack heights at each MARK, as the unpickler keeps them
        self.memo: dict = {}
        self.memoize = None  # True: MEMOIZE opcodes, False: PUT opcodes (never both)
        self.opcodes = 0
        self.work = 0
        self.limit = WORK_PER_BYTE * size + _WORK_FLOOR

    def charge(self, steps: int) -> None:
        self.work += steps
        if self.work > self.limit:
            raise UnsafePickleError(f"refused a pickle that needs more than {self.limit} decoding steps "
                                    f"({WORK_PER_BYTE} per byte)")

    def _floor(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self):
        if len(self.stack) <= self._floor():
            raise UnsafePickleError("refused a pickle that pops what is not there")
        return self.stack.pop()

    def pop_to_mark(self) -> list:
        if not self.marks:
            raise UnsafePickleError("refused a pickle that pops to a mark it never set")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        self.charge(len(items))
        return items

    def top(self, kind: str) -> _Node:
        if len(self.stack) <= self._floor() or self.stack[-1].kind != kind:
            raise UnsafePickleError(f"refused a pickle that adds items to something other than a {kind}")
        return self.stack[-1]

    def hashed(self, nodes) -> None:
        """Dict keys and set members: scalars whose hashes cannot be made to collide."""
        for node in nodes:
            if node.kind in ("str", "bytes"):  # randomised hashes; equal keys compare their bytes
                self.charge(1 + len(node.value) // 16)
            elif node.kind == "int":
                if not -_HASH_MODULUS < node.value < _HASH_MODULUS:
                    raise UnsafePickleError("refused an int key or set member beyond 61 bits (their hashes collide)")
            elif node.kind not in ("float", "bool", "none"):
                raise UnsafePickleError(f"refused a {node.kind} as a dict key or set member")

    def named(self, module: str, name: str) -> _Node:
        module = "builtins" if module == "__builtin__" else module
        if (module, name) not in _ALLOWED_GLOBALS and (module, name) != ("_codecs", "encode"):
            raise UnsafePickleError(f"refused to unpickle {module}.{name}: replies may only hold plain containers, "
                                    "numbers, strings and bytes")
        return _Node("global", (module, name))

    def reduce(self, func: _Node, args: _Node) -> _Node:
        if func.kind != "global" or args.kind != "tuple":
            raise UnsafePickleError("refused a pickle that calls something other than an allowed constructor")
        if func.value == ("_codecs", "encode"):
            text = args.items[0] if args.items else None
            if text is None or text.kind != "str" or len(args.items) > 2:
                raise UnsafePickleError("refused _codecs.encode with anything but (str, 'latin1')")
            self.charge(1 + len(text.value) // 16)
            return _Node("bytes", text.value)
        if len(args.items) > 1 or (args.items and args.items[0].kind not in ("list", "tuple", "set", "frozenset")):
            raise UnsafePickleError(f"refused {func.value[1]}() of anything but a list, tuple or set")
        source = args.items[0].items if args.items else []
        self.charge(len(source))
        self.hashed(source)
        # The set holds the source's items; counting the source node too only overcounts by one.
        return _Node(func.value[1], items=list(args.items))

    def step(self, name: str, arg):
        push = self.stack.append
        if name in _PUSHES:
            push(_Node(_PUSHES[name], arg))
        elif name == "INT":  # protocol 0 writes True / False as INT 01 / 00
            push(_Node("bool" if isinstance(arg, bool) else "int", arg))
        elif name in _FROM_MARK:
            items = self.pop_to_mark()
            if name == "DICT":
                if len(items) % 2:
                    raise UnsafePickleError("refused a dict with a key and no value")
                self.hashed(items[::2])
            elif name == "FROZENSET":
                self.hashed(items)
            push(_Node(_FROM_MARK[name], items=items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self.pop() for _ in range(int(name[-1]))]
            push(_Node("tuple", items=items[::-1]))
        elif name == "APPEND":
            value = self.pop()
            self.top("list").items.append(value)
        elif name == "APPENDS":
            items = self.pop_to_mark()
            self.top("list").items.extend(items)
        elif name == "SETITEM":
            value, key = self.pop(), self.pop()
            self.hashed([key])
            self.top("dict").items.extend((key, value))
        elif name == "SETITEMS":
            items = self.pop_to_mark()
            if len(items) % 2:
                raise UnsafePickleError("refused a dict with a key and no value")
            self.hashed(items[::2])
            self.top("dict").items.extend(items)
        elif name == "ADDITEMS":
            items = self.pop_to_mark()
            self.hashed(items)
            self.top("set").items.extend(items)
        elif name == "MARK":
            self.marks.append(len(self.stack))
        elif name == "POP":  # the unpickler's POP drops a mark set at the top, else a value
            if self.marks and self.marks[-1] == len(self.stack):
                self.marks.pop()
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_to_mark()
        elif name == "DUP":
            node = self.pop()
            push(node)
            push(node)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in self.memo:
                raise UnsafePickleError(f"refused a pickle that reads memo slot {arg} before writing it")
            push(self.memo[arg])
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            # The unpickler numbers MEMOIZE slots by the memo's size: keep one style so the
            # model's slots are the unpickler's.
            memoize = name == "MEMOIZE"
            if self.memoize not in (None, memoize):
                raise UnsafePickleError("refused a pickle that mixes MEMOIZE with PUT")
            self.memoize = memoize
            # The unpickler sizes its memo table by the largest slot: one PUT of slot 2**31
            # would allocate and clear 16 GiB. Picklers number slots in order, from 0.
            if not memoize and not 0 <= arg <= len(self.memo):
                raise UnsafePickleError(f"refused a pickle that writes memo slot {arg} of {len(self.memo)}")
            node = self.pop()
            push(node)
            self.memo[len(self.memo) if memoize else arg] = node
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            push(self.named(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = self.pop(), self.pop()
            if module.kind != "str" or attr.kind != "str":
                raise UnsafePickleError("refused a STACK_GLOBAL whose names are not strings")
            push(self.named(module.value, attr.value))
        elif name == "REDUCE":
            args = self.pop()
            push(self.reduce(self.pop(), args))
        elif name not in ("PROTO", "FRAME"):
            raise UnsafePickleError(f"refused a pickle with the {name} opcode (replies hold plain data only)")

    def expanded_size(self, root: _Node) -> int:
        """Items of the decoded value counted as a walk meets them (shared ones each time),
        capped just above the opcode count; a cycle is refused."""
        cap = self.opcodes + 1
        todo = [(root, False)]
        while todo:
            node, counted = todo.pop()
            if counted:  # its items are counted: an item without items counts one
                node.size = min(cap, 1 + sum(c.size if c.items else 1 for c in node.items))
                continue
            if node.size is not None:
                continue
            node.size = _ACTIVE
            todo.append((node, True))
            self.charge(len(node.items))
            for child in node.items:
                if child.items:
                    if child.size == _ACTIVE:
                        raise UnsafePickleError("refused a pickle whose value contains itself")
                    if child.size is None:
                        todo.append((child, False))
        return root.size if root.items else 1

def scan(data: bytes) -> None:
    """Refuse ``data`` unless unpickling it, and walking the result, is linear in its size.

    Raises :class:`UnsafePickleError` (or :class:`ResponseContractError` for bytes that are
    no pickle) without building any of the value."""
    state = _Scan(len(data))
    result = None
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            state.opcodes += 1
            state.charge(1)
            if opcode.name == "STOP":
                result = state.pop()
                break
            state.step(opcode.name, arg)
    except UnsafePickleError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ResponseContractError(f"body is not a valid pickle ({type(exc).__name__}: {exc})") from None
    if result is None:
        raise ResponseContractError("body is not a valid pickle (no STOP opcode)")
    if state.expanded_size(result) > state.opcodes:
        raise UnsafePickleError(f"refused a pickle whose value holds one container more than once "
                                f"(it would expand past its {state.opcodes} opcodes)")

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


def safe_loads(data: bytes, *, max_bytes: int = MAX_PICKLE_BYTES):
    """``pickle.loads`` restricted to plain data; raises :class:`UnsafePickleError` otherwise.

    Time and memory are linear in ``len(data)``, which may not exceed ``max_bytes``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"safe_loads expects bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise UnsafePickleError(f"refused a pickle of {len(data)} bytes (the limit is {max_bytes})")
    scan(data)
    try:
        value = _RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError,
            RecursionError, AttributeError, UnicodeDecodeError) as exc:
        raise ResponseContractError(f"body is not a valid pickle ({type(exc).__name__}: {exc})") from None
    _check_plain(value)
    return value
