"""Reading a PyTorch state dict (``pytorch_model.bin``, written by ``torch.save``) without PyTorch.

Many GPT-2 fine-tunes on the Hugging Face hub ship only this file; nanoGPT's ``ckpt.pt`` is a
``torch.save``'d dict too, its state dict beside the optimizer's and plain Python data (``read_checkpoint``).
``torch.save`` writes one of two layouts, and both are a pickle of the dict plus the tensors' raw bytes kept
outside the pickle.

The pickle. A tensor pickles as a call ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size,
stride, requires_grad, backward_hooks)``: a *storage* is a flat buffer of one dtype, and the tensor is the
strided view of it whose element ``[i, j, ...]`` is ``storage[storage_offset + i * stride[0] + j *
stride[1] + ...]`` (offset and strides count elements, not bytes). Several tensors may view one storage
(transformers' tied ``lm_head.weight`` is ``wte.weight``'s), and a view need not be contiguous (a
transposed matrix saved as is). The storage itself is not in the pickle: it is a *persistent id*, a tuple
``("storage", torch.FloatStorage, key, location, numel)`` whose type names the dtype and whose key says
where its bytes are.

The zip layout (PyTorch >= 1.6): a zip archive, uncompressed, with every record under one folder
(``archive/`` in today's files)::

    archive/data.pkl       the pickle
    archive/data/<key>     each storage's bytes, numel * itemsize of them
    archive/byteorder      "little" or "big": the storages' byte order (absent in older files: little)
    archive/version        the format version

The legacy layout (before 1.6; the original GPT-2 files on the hub): one stream of a pickled magic number
(0x1950A86A20F9469CFC6C), a pickled protocol version (1001), a pickled dict of system information, the
pickle of the state dict (its persistent ids carry a sixth item, a storage view, None in files of any
recent PyTorch), a pickled list of the storage keys, then for each key in that order an 8-byte
little-endian element count and the storage's little-endian bytes.

Safety: unpickling runs whatever functions the pickle names, so a ``.bin`` from the internet could run any
code (``os.system``). The unpickler here resolves only the names a state dict uses, each to a stand-in defined
below (an ``OrderedDict``, the rebuild functions, the storage types); any other name is refused before
anything is called, and copyreg's numbered extension codes (EXT1/2/4), which could reach a global past that
check, are refused before the pickle runs, as is an object a walk (a hash of a dict key, a repr) would visit
more than 2**24 times over (a tuple of a tuple twice, 40 deep, is 2**40 tuples in 500 bytes). Nor can a file's
sizes take memory out of proportion to it: the storages' sizes the pickle claims are checked against the bytes
the file holds before they are read, and the tensors, each copied out of its storage, may hold at most twice
their storages' elements (a tied weight's two views), so a few hundred bytes cannot ask for a broadcast of
gigabytes (a zip record compressed by hand, which torch.save never writes, still expands to the size it
declares, as it does in ``torch.load``). Tensors come back as NumPy arrays of their own dtype, but bfloat16,
which NumPy lacks: it is widened to float32, exactly (a bfloat16 is the upper half of a float32).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from tinygpt.errors import TinyGPTError, is_int, shown
from tinygpt.files import unreadable_weights

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch's storage types and the dtype of their bytes ("bfloat16": 16-bit patterns, widened when read)
STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}  # fmt: skip


def read_state_dict(file: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``'d dict of tensors, by name, as NumPy arrays (bfloat16 as float32).

    Every flaw of the file (not a PyTorch file, truncated, a storage missing, a dtype NumPy cannot hold, a
    pickle that is not a dict of tensors or that names any other function) is one TinyGPTError naming it.
    """
    return _read(file, lambda obj: (_tensors_of(obj), None))[0]


def read_checkpoint(file: str | os.PathLike,
                    state_dict_key: str = "model") -> tuple[dict[str, np.ndarray], dict]:
    """A training checkpoint: a ``torch.save``'d dict holding a state dict under ``state_dict_key`` beside
    other entries, as nanoGPT's ``ckpt.pt`` holds ``model`` beside ``optimizer``, ``model_args``,
    ``iter_num``, ``best_val_loss`` and ``config``.

    Returns ``(state dict, entries)``: the state dict's tensors as ``read_state_dict`` gives them, and the
    other entries whose values are plain Python data (numbers, strings, None, and lists, tuples and dicts
    of them). An entry holding a tensor (the optimizer's moments, a 0-d ``best_val_loss``) is left out, its
    bytes never read: the pickle names the same few globals as a state dict's (any other is refused as
    there), and its tensors stay the small records the unpickler makes of them, so loading costs the
    model's bytes, not the optimizer's twice as many. Every flaw is one TinyGPTError naming the file.
    """
    def select(obj):
        if not isinstance(obj, dict) or state_dict_key not in obj:
            kind = type(obj).__name__ if not isinstance(obj, dict) else \
                f"dict of {', '.join(map(repr, list(obj)[:6]))}"
            raise TinyGPTError(f"the pickle holds a {kind:.120}, not a checkpoint with a {state_dict_key!r} "
                               "entry")
        entries = {key: value for key, value in obj.items() if key != state_dict_key and _is_plain(value)}
        return _tensors_of(obj[state_dict_key]), entries

    return _read(file, select)


def _read(file, select):
    """``select(unpickled)`` -> (the tensors to read, anything else), for either layout; returns the arrays
    of the tensors and the anything else."""
    try:
        with open(file, "rb") as f:
            if f.read(4) == b"PK\x03\x04":  # every zip archive starts with a local file header
                return _read_zip(file, select)
            f.seek(0)
            return _read_legacy(f, select)
    except (TinyGPTError, OSError) as exc:
        raise TinyGPTError(unreadable_weights(file, exc)) from None


# --- what the pickle is allowed to name ----------------------------------------------------------------


# The stand-ins are named tuples: a pickle can set attributes on any object it holds (its BUILD opcode),
# which could change a tensor's offset after it was checked, or a storage type's dtype for every later load
# in the process. A tuple has no attributes to set, no __dict__, and no __setstate__ (a frozen dataclass
# with slots has one, which sets its fields).


class _StorageType(NamedTuple):
    """Stands in for ``torch.FloatStorage`` and its kind: only the dtype matters here."""

    dtype: str


class _Storage(NamedTuple):
    """A storage the pickle refers to: its bytes are read after the pickle (legacy) or beside it (zip)."""

    key: str
    dtype: str
    numel: int


class _Tensor(NamedTuple):
    """A tensor the pickle rebuilds: a strided view of ``storage`` (offset and strides in elements)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """``torch._utils._rebuild_tensor`` and ``_rebuild_tensor_v2``: a ``_Tensor``, its arguments checked.

    requires_grad and the (always empty) hooks do not change the values; metadata would: it sets a
    tensor's negative or conjugate bit, which tinygpt does not apply, so it is refused. Offsets, sizes and
    strides are torch's int64s, at most 64 of them: a pickle's longer integers would make sums and products
    too long to print in a message (Python refuses past 4,300 digits).
    """
    if metadata:
        raise TinyGPTError(f"a tensor carries metadata {shown(metadata):.40} (a negative or conjugate view)")
    if not isinstance(storage, _Storage):
        raise TinyGPTError("a tensor is rebuilt from something that is not a storage")
    if not is_int(storage_offset) or not 0 <= storage_offset < 2**63:
        raise TinyGPTError(f"a tensor has storage offset {shown(storage_offset):.40}")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride) or \
            len(size) > 64 or not all(is_int(n) and 0 <= n < 2**63 for n in size + stride):
        raise TinyGPTError(f"a tensor has size {shown(size):.40} and stride {shown(stride):.40}")
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):
    """``torch._utils._rebuild_parameter`` (and ``_with_state``): a ``Parameter``'s values are its data."""
    return data


class _Function(NamedTuple):
    """One of the functions above as the pickle sees it: callable, but with no attributes it could set
    (a function's ``__defaults__`` can be)."""

    function: Callable

    def __call__(self, *args):
        return self.function(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a state dict's type, and the hooks' (empty)
    ("torch._utils", "_rebuild_tensor"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only ``_ALLOWED_GLOBALS`` and keeps the storages it meets.

    ``pickle.Unpickler`` looks every name a pickle uses (``os.system``, ``builtins.eval``) up through
    ``find_class``; refusing there refuses before anything runs, since a pickle can call only what it has
    named. The persistent ids (storages) become ``_Storage`` records, one per key, shared by their views.
    """

    def __init__(self, file, legacy: bool):
        super().__init__(file, encoding="utf-8")  # (for pickles from Python 2, as torch.load does)
        self.file = file
        self.legacy = legacy
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module, name):
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            why = ("a dtype tinygpt does not load" if module == "torch" and name.endswith("Storage")
                   else "only a dict of float, integer and bool tensors can be read")
            raise TinyGPTError(f"refused to load {module}.{name} from the pickle ({why})")
        return allowed

    def persistent_load(self, pid):
        expected_len = 6 if self.legacy else 5
        if not (isinstance(pid, tuple) and len(pid) == expected_len and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and is_int(pid[4])
                and 0 <= pid[4] < 2**63):  # (numel, an int64 in torch)
            raise TinyGPTError(f"unexpected persistent id {shown(pid):.80} in the pickle")
        if self.legacy and pid[5] is not None:
            raise TinyGPTError("it holds a storage view (from an old PyTorch), which tinygpt does not read")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        storage = self.storages.setdefault(key, _Storage(key, storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise TinyGPTError(f"storage {key} is described twice, differently")
        return storage


def _unpickle(unpickler: _RestrictedUnpickler):
    # the bytes are untrusted, so anything can go wrong inside pickle (UnpicklingError, EOFError, a
    # KeyError for a memo entry, a TypeError calling a stand-in with the wrong arguments): all of it means
    # a corrupt file, to be one line, not a traceback
    try:
        check_pickle_opcodes(unpickler.file)
        return unpickler.load()
    except TinyGPTError:
        raise
    except Exception as exc:
        raise TinyGPTError(f"corrupt pickle ({type(exc).__name__}: {exc})") from None


# EXT1/2/4 name a global by a number registered with copyreg.add_extension, and the C unpickler answers
# one from copyreg's process-wide cache without asking find_class: once anything in the process has
# registered an extension and loaded it, a pickle could reach that global past the allow-list. No
# torch.save file uses them (nor nanoGPT's meta.pkl, which tinygpt.data reads with this check), so they are
# refused before the pickle is read.
_EXTENSION_OPCODES = {"EXT1", "EXT2", "EXT4"}
# The pickle's memo lets an object be used many times: a tuple of t twice, that tuple twice, and so on,
# forty deep in 500 bytes, is 2**40 tuples when walked, and a dict key is walked when the unpickler hashes
# it (so load never returned), as a repr of it is. Every object's size counted with each use of a shared
# part (what a walk visits) must stay below this: a state dict, a nanoGPT ckpt.pt's entries, a meta.pkl of
# 100,000 characters count well under a million; hashing 2**24 tuples takes a fraction of a second.
_PICKLE_MAX_WALK = 1 << 24
# the opcodes that add to the object below their arguments (it stays, the same object, on the stack)
_GROWING_OPCODES = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_MEMO_PUTS, _MEMO_GETS = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}, {"GET", "BINGET", "LONG_BINGET"}
# What check_pickle_opcodes keeps of each object the pickle builds, a list (cheaper to make than an instance,
# one per opcode): [_SIZE] the objects a walk of it visits, as counted when it was made and grown; [_PARTS]
# the objects it was made from and filled with (None: none); [_NESTED] whether it has gone into another since
_SIZE, _PARTS, _NESTED = 0, 1, 2


def _refuse_walk_size(size: int) -> None:
    if size > _PICKLE_MAX_WALK:
        raise TinyGPTError(f"refused the pickle: an object in it is more than {_PICKLE_MAX_WALK:,} objects "
                           "when walked (one part used over and over), which nothing tinygpt reads is")


def _check_walk_size(root: list) -> None:
    """Count again, from the parts, the walk of ``root`` and of each object in it, refusing one over
    ``_PICKLE_MAX_WALK``: the sizes counted as the pickle ran miss what a list or dict was filled with after
    it went into another (its holder's size was taken when it was still empty). Each object is counted once
    (a post-order walk of the parts, each size kept by the object's id), so this takes time in proportion to
    the pickle. A part that holds its own holder counts as one object where the
    cycle closes, as repr's ``[...]`` does: exact for a pickle without cycles; through a cycle the count
    follows one order of the walk (nothing tinygpt does walks a cycle's paths one by one: ``_is_plain``
    keeps the objects it has seen, and errors show a value with reprlib, a few levels deep)."""
    sizes, on_path = {}, set()
    todo = [(root, False)]
    while todo:
        walked, parts_done = todo.pop()
        key, parts = id(walked), walked[_PARTS] or ()
        if parts_done:
            on_path.discard(key)
            size = 1 + sum(sizes.get(id(part), 1) for part in parts)
            _refuse_walk_size(size)  # (so no size kept is more than the limit: the sums stay small)
            sizes[key] = size
        elif key not in sizes and key not in on_path:
            on_path.add(key)
            todo.append((walked, True))
            # (a part made of nothing, a number or a string, is 1: nothing to walk)
            todo.extend((part, False) for part in parts if part[_PARTS] is not None and id(part) not in sizes)


def check_pickle_opcodes(file) -> None:
    """Read the pickle at ``file``'s position through to its STOP opcode (not running it), refusing an
    extension code and an object whose walk, shared parts counted at each use, exceeds ``_PICKLE_MAX_WALK``;
    the position is restored for the real load.

    The walk's size is counted on a copy of the pickle's stack and memo holding, for each object, a list
    (``_SIZE``, ``_PARTS``, ``_NESTED``): the number of objects a walk of it visits (1 + those of what it
    was made from), the same list for every use of the object, grown in place by the opcodes that add to it
    (APPEND, SETITEM, ...). That
    count is exact for what a pickle builds from the bottom up (as it builds the hashable objects, tuples
    and frozensets, the ones the unpickler walks to hash them); an object grown after it went into another
    makes the value's walk be counted again from the parts (``_check_walk_size``) once the pickle has been
    read (``pickle.dumps`` does so only for an object that holds its own holder).
    """
    start = file.tell()
    stack, memo = [], {}
    grown_after_nesting = False
    value = None
    for opcode, arg, _ in pickletools.genops(file):
        name = opcode.name
        if name in _EXTENSION_OPCODES:
            raise TinyGPTError(f"refused the pickle's {opcode.name} opcode (a copyreg extension code, "
                               "which could name any global)")
        if name in _MEMO_PUTS:
            if stack and stack[-1] is not None:  # (else a malformed pickle, which the unpickler refuses)
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in _MEMO_GETS:
            stack.append(memo.get(arg) or [1, None, False])
            continue
        if name == "DUP":
            stack.append(stack[-1] if stack else [1, None, False])
            continue
        if name == "STOP":
            value = stack[-1] if stack else None
            continue
        before = opcode.stack_before
        popped = []
        if pickletools.markobject in before or (name == "POP" and stack and stack[-1] is None):
            while stack and stack[-1] is not None:  # None: a MARK
                popped.append(stack.pop())
            if stack:
                stack.pop()
            count = before.index(pickletools.markobject) if pickletools.markobject in before else 0
        else:
            count = len(before)
        for _ in range(min(count, len(stack))):
            popped.append(stack.pop())
        if pickletools.markobject in opcode.stack_after:
            stack.append(None)
        elif opcode.stack_after:
            if name in _GROWING_OPCODES and popped:
                walked = popped.pop()  # the object added to: the deepest of those popped
                if popped:
                    walked[_SIZE] += sum(part[_SIZE] for part in popped)
                    if walked[_PARTS] is None:
                        walked[_PARTS] = popped
                    else:
                        walked[_PARTS].extend(popped)
                    grown_after_nesting |= walked[_NESTED]
            else:
                walked = [1 + sum(part[_SIZE] for part in popped), popped or None, False]
            for part in popped:
                part[_NESTED] = True
            _refuse_walk_size(walked[_SIZE])
            stack.append(walked)
    if grown_after_nesting and value is not None:
        _check_walk_size(value)
    file.seek(start)


def _is_plain(value) -> bool:
    """True when ``value`` is plain data: numbers, strings, bytes, None, and lists, tuples and dicts of them
    (walked without recursion: a pickle can nest them 100,000 deep, or make a list that holds itself).

    Only objects inside ``value`` go on the walk, a dict's keys and values, never its ``items()`` pairs:
    those are made afresh and freed once walked, and CPython gives the next pair the freed one's address,
    so the ``id`` of a pair in ``seen`` skipped the next dict's first entry (a tensor two dicts deep,
    AdamW's moments in a ckpt.pt's optimizer, passed as plain)."""
    seen, todo = set(), [value]
    while todo:
        item = todo.pop()
        if isinstance(item, (str, bytes, int, float, type(None))):  # (bool is an int)
            continue
        if type(item) not in (list, tuple, dict, collections.OrderedDict):
            return False  # a tensor, a storage, or one of the stand-ins themselves
        if type(item) is collections.OrderedDict and vars(item):
            return False  # attributes a BUILD set, which may hide its methods: model_args.get, config.get
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):  # (dict's methods: an OrderedDict's own may be hidden, see _tensors_of)
            todo.extend(dict.keys(item))
            todo.extend(dict.values(item))
        else:
            todo.extend(item)
    return True


def _tensors_of(state) -> dict[str, _Tensor]:
    """The unpickled object, checked to be a state dict: string names to tensors."""
    if not isinstance(state, dict):
        raise TinyGPTError(f"the pickle holds a {type(state).__name__}, not a dict of tensors")
    # dict's own items(), not the object's: an OrderedDict's BUILD (how its _metadata arrives) could set an
    # attribute "items" that hides the method, and a dict of anything read as an empty state dict
    items = list(dict.items(state))
    for name, value in items:
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            kind = "a dict" if isinstance(value, dict) else type(value).__name__
            raise TinyGPTError(f"the pickle is not a dict of tensors: {name!r} holds {kind} (a training "
                               "checkpoint? save its model's state_dict() alone)")
    return dict(items)


# --- from a storage's bytes to arrays ------------------------------------------------------------------


def _arrays(tensors: dict[str, _Tensor], storages, byteorder: str) -> dict[str, np.ndarray]:
    """Each tensor as an array of its own, copied out of its storage's bytes as ``storages`` yields them.

    ``storages`` yields ``(storage, bytes)`` one storage at a time, and a storage's bytes are dropped once
    its views are copied: loading takes the memory of the arrays plus one storage, not twice the file.
    """
    # a view can hold more elements than its storage (zero strides, as torch's expand() makes) and any
    # number of views can share one, so a file of a few hundred bytes could ask for terabytes of copies; a
    # state dict's tensors view their storages once each, twice for a tied weight (lm_head.weight is
    # wte.weight's), so more than twice the storages' elements is refused before anything is copied
    stored = sum({tensor.storage.key: tensor.storage.numel for tensor in tensors.values()}.values())
    elements = sum(math.prod(tensor.size) for tensor in tensors.values())
    if elements > 2 * stored:
        raise TinyGPTError(f"its tensors hold {elements:,} elements, more than twice the {stored:,} of the "
                           "storages they view (zero strides or overlapping views), which tinygpt would copy")
    views_of: dict[str, list[str]] = {}
    for name, tensor in tensors.items():
        views_of.setdefault(tensor.storage.key, []).append(name)
    arrays = {}
    for storage, raw in storages:
        for name in views_of.pop(storage.key, []):
            arrays[name] = _view_copy(raw, tensors[name], byteorder, name)
    if views_of:
        key = next(iter(views_of))
        raise TinyGPTError(f"the bytes of storage {key} (of tensor {views_of[key][0]!r}) are missing")
    return {name: arrays[name] for name in tensors}  # the file's order


def _view_copy(raw: bytes, tensor: _Tensor, byteorder: str, name: str) -> np.ndarray:
    """``tensor``'s strided view of its storage's bytes ``raw``, copied into an array of its own."""
    storage = tensor.storage
    dtype = _raw_dtype(storage).newbyteorder(byteorder)
    # as_strided reads wherever offset and strides point: every element the view reaches must lie inside
    # the storage, or a corrupt file would read (or crash on) memory that is not the file's
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.size, tensor.stride))
    if last >= storage.numel and 0 not in tensor.size:
        raise TinyGPTError(f"tensor {name!r} (offset {tensor.offset}, size {tensor.size}, stride "
                           f"{tensor.stride}) reaches past its storage's {storage.numel} elements")
    try:
        if 0 in tensor.size:
            view = np.empty(tensor.size, dtype=dtype)
        else:
            elements = np.frombuffer(raw, dtype=dtype)
            # NumPy's strides count bytes; a dimension of size 1 never steps, so its stride is not
            # multiplied out (torch loads a stride of 2**62 there, whose 2**64 bytes overflow NumPy's int64)
            strides = [s * dtype.itemsize if n > 1 else 0 for n, s in zip(tensor.size, tensor.stride)]
            view = np.lib.stride_tricks.as_strided(
                elements[tensor.offset:], shape=tensor.size, strides=strides, writeable=False
            )
    except ValueError as exc:  # a size whose bytes overflow an index ("array is too big"), or 65 dimensions
        raise TinyGPTError(f"tensor {name!r} has size {tensor.size} ({exc})") from None
    if storage.dtype == "bfloat16":
        return bfloat16_to_float32(view)
    return view.astype(dtype.newbyteorder("="), order="C")  # a contiguous copy, in the machine's byte order


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 values, given as their 16-bit patterns (any integer array), widened to float32 exactly: a
    bfloat16 is the upper half of a float32, so shifted up 16 bits its pattern is that float32's.

    >>> bfloat16_to_float32(np.array([0x3F80, 0xC040], dtype=np.uint16))  # 1.0 and -3.0
    array([ 1., -3.], dtype=float32)
    """
    return (bits.astype(np.uint32, order="C") << 16).view(np.float32)


def _raw_dtype(storage: _Storage) -> np.dtype:
    """The NumPy dtype of a storage's elements as stored (bfloat16: their 16-bit patterns)."""
    return np.dtype(np.uint16 if storage.dtype == "bfloat16" else storage.dtype)


# --- the two layouts -----------------------------------------------------------------------------------


def _zip_damage(call, *args):
    """``call(*args)``, a zipfile call, with whatever it raises on a damaged archive as one TinyGPTError (an
    OSError of the file itself, and a MemoryError, as they are). zipfile's errors are not all BadZipFile: a
    flipped byte can make a record's name invalid UTF-8 (torch.save flags its names UTF-8: a
    UnicodeDecodeError), mark a record encrypted (RuntimeError), name a compression or zip version it lacks
    (NotImplementedError), or put the directory past any offset a seek takes (ValueError)."""
    try:
        return call(*args)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # (EOFError, zlib.error, BadZipFile and the above)
        raise TinyGPTError(f"a corrupt or truncated zip archive ({type(exc).__name__}: {exc})") from None


def _read_zip(file: str, select):
    with _zip_damage(zipfile.ZipFile, file) as archive:
        names = set(archive.namelist())
        pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise TinyGPTError("a zip archive without one FOLDER/data.pkl (not a torch.save file)")
        folder = pickles[0].removesuffix("data.pkl")
        unpickler = _RestrictedUnpickler(io.BytesIO(_zip_damage(archive.read, pickles[0])), legacy=False)
        tensors, rest = select(_unpickle(unpickler))
        byteorder = "little"  # what torch assumes of files from before the record existed
        if folder + "byteorder" in names:
            byteorder = _zip_damage(archive.read, folder + "byteorder").decode("ascii", "replace")
            if byteorder not in ("little", "big"):
                raise TinyGPTError(f"byteorder is {byteorder!r:.20}, not 'little' or 'big'")
        in_use = {tensor.storage.key: tensor.storage for tensor in tensors.values()}
        return _arrays(tensors, _zip_storages(archive, folder, in_use.values()),
                       "<" if byteorder == "little" else ">"), rest


def _zip_storages(archive: zipfile.ZipFile, folder: str, storages):
    """The storages' bytes, one at a time, every record's presence and size checked against the pickle's
    first (from the archive's directory): a size the pickle claims is one the file holds before anything is
    read or copied."""
    records = []
    for storage in storages:
        record = f"{folder}data/{storage.key}"
        try:
            size = archive.getinfo(record).file_size
        except KeyError:
            raise TinyGPTError(f"the storage record {record} is missing") from None
        nbytes = storage.numel * _raw_dtype(storage).itemsize
        if size != nbytes:
            raise TinyGPTError(f"the storage record {record} holds {size} bytes, the pickle says {nbytes}")
        records.append((storage, record))
    return ((storage, _zip_damage(archive.read, record)) for storage, record in records)  # (size bytes)


def _read_legacy(f, select):
    # a pickle starts with its protocol (opcode 0x80, then 2 to 5): anything else is not a torch.save file
    start = f.read(2)
    f.seek(0)
    if len(start) != 2 or start[0] != 0x80 or not 2 <= start[1] <= 5 or \
            _unpickle(_RestrictedUnpickler(f, legacy=True)) != LEGACY_MAGIC_NUMBER:
        raise TinyGPTError("neither a zip archive nor a legacy torch.save file (no magic number)")
    version = _unpickle(_RestrictedUnpickler(f, legacy=True))
    if version != LEGACY_PROTOCOL_VERSION:
        raise TinyGPTError(f"legacy torch.save protocol version {shown(version):.20}, expected 1001")
    _unpickle(_RestrictedUnpickler(f, legacy=True))  # system information: byte order, sizes of C types
    unpickler = _RestrictedUnpickler(f, legacy=True)
    tensors, rest = select(_unpickle(unpickler))
    keys = _unpickle(_RestrictedUnpickler(f, legacy=True))
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in unpickler.storages for k in keys):
        raise TinyGPTError(f"the list of storage keys {shown(keys)} does not match the pickle's "
                           "storages")
    storages = [unpickler.storages[key] for key in keys]
    # the sizes the pickle claims, against what the file holds, before a read of that size allocates it
    needed = sum(8 + storage.numel * _raw_dtype(storage).itemsize for storage in storages)
    left = os.fstat(f.fileno()).st_size - f.tell()
    if needed > left:
        raise TinyGPTError(f"its storages take {needed:,} bytes, the {left:,} after its pickles are too few "
                           "(a truncated file?)")
    in_use = {tensor.storage.key for tensor in tensors.values()}
    return _arrays(tensors, _legacy_storages(f, storages, in_use), "<"), rest


def _legacy_storages(f, storages: list[_Storage], in_use: set[str]):
    """The storages in the file's order, each an 8-byte little-endian element count and its bytes; those
    no tensor views are skipped."""
    for storage in storages:
        nbytes = storage.numel * _raw_dtype(storage).itemsize
        count = f.read(8)
        if len(count) != 8 or int.from_bytes(count, "little") != storage.numel:
            raise TinyGPTError(f"storage {storage.key}'s element count is missing or not the pickle's "
                               f"{storage.numel} (a truncated file?)")
        if storage.key not in in_use:
            f.seek(nbytes, io.SEEK_CUR)
            continue
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise TinyGPTError(f"storage {storage.key} is cut short: {len(raw)} of {nbytes} bytes "
                               "(a truncated file?)")
        yield storage, raw
