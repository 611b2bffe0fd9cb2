"""Read a PyTorch pickle checkpoint without running code from it.

`read_torch_pickle(path)` returns what `torch.save` stored (zip format, or the legacy non-zip
format of torch < 1.6), with tensors as tensors and every object of a foreign class (dill
functions, cox stores, argparse namespaces, ...) replaced by an inert `ForeignStub`.

How: torch.load does the file format (zip records or the legacy stream, storages, locations)
and is handed this module's `RestrictedUnpickler` as its pickle module. A pickle can only run
code through the callables it names (GLOBAL / STACK_GLOBAL / INST / EXT opcodes, which all go
through `find_class`) and then calls (REDUCE, NEWOBJ, BUILD). `find_class` answers
- an allowlisted name with advfeat's own safe function or a harmless type: tensor rebuilds
  (`torch._utils._rebuild_tensor_v2`, ... -> `_rebuild_tensor`, which accepts only a real
  storage and drops backward hooks), OrderedDict, torch.Size, dtypes, set, ...;
- a name that can run code (os.system, builtins.eval, subprocess, torch.load, ...) by refusing
  the whole file (`HostilePickle`), so the user learns what the file tried;
- any other name with a stub class, whose calls and state are recorded, never executed.
So nothing from the file is ever called but allowlisted functions. Nor can the file change
them: the allowlisted functions are frozen callables and stub classes refuse new attributes
(BUILD could otherwise set attributes that torch's legacy loader reads, e.g. `dump_patches`,
which makes it write a .patch file), stub classes are made afresh for each file, and the
legacy format's pickled-module records ('module' persistent ids, whole nn.Modules, never a
state dict) are refused. The idea follows torch's
own `weights_only=True` unpickler (torch/_weights_only_unpickler.py), which refuses every
unknown global instead: the robustness library's files (saved with dill) hold some.

Deviation from torch.load: a TorchScript archive (which holds code) is refused instead of
being handed to torch.jit.load.
"""

from __future__ import annotations

import codecs
import pickle
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from advfeat.errors import UserError


class HostilePickle(pickle.UnpicklingError):
    """The pickle names a callable that can run code; raised before anything is called."""


class _FrozenClass(type):
    """The metaclass of stubs: a pickle's BUILD cannot set attributes on a stub class."""

    def __setattr__(cls, name, value):
        raise pickle.UnpicklingError(f"the pickle sets {name!r} on {cls.__name__}")


class ForeignStub(metaclass=_FrozenClass):
    """An inert stand-in for an object of a class advfeat does not load.

    Calling, constructing, BUILD-ing or filling it only records the arguments.
    """

    origin = "?"
    dump_patches = False  # torch's legacy loader asks containers this; never write patch files

    def __new__(cls, *args, **kwargs):
        stub = object.__new__(cls)
        stub.__dict__.update(args=args, kwargs=kwargs, state=None, items=[])
        return stub

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["state"] = state

    def __call__(self, *args, **kwargs):
        return make_stub_class(f"{self.origin}()")(*args, **kwargs)

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def __repr__(self):
        return f"<stub of {self.origin}>"


def make_stub_class(origin: str) -> type:
    """A new stub class for the foreign global `origin` ("module.name")."""
    return _FrozenClass("ForeignStub", (ForeignStub,), {"origin": origin})


class _Frozen:
    """An allowlisted function, as a callable whose attributes a pickle cannot change."""

    __slots__ = ("_function",)

    def __init__(self, function):
        object.__setattr__(self, "_function", function)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError(f"the pickle sets {name!r} on an allowlisted function")

    def __call__(self, *args, **kwargs):
        return self._function(*args, **kwargs)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored, **_ignored_kw):
    """torch._utils._rebuild_tensor(_v2) for real storages only; requires_grad, backward hooks
    and tensor metadata are dropped (a hook is a callable the file chose)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor whose storage is {type(storage).__name__}, not a storage")
    if not isinstance(storage_offset, int) or not all(isinstance(n, int) for n in (*size, *stride)):
        raise pickle.UnpicklingError("a tensor with a non-integer offset, size or stride")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    """A Parameter comes back as its tensor: only the values matter here."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter holding {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type(function, new_type, args, state):
    """torch._tensor._rebuild_from_type_v2, used for tensors that carry Python attributes: the
    tensor is rebuilt by an allowlisted function and comes back plain (type and attributes dropped)."""
    if not isinstance(function, _Frozen) or new_type not in (torch.Tensor, torch.nn.Parameter):
        raise pickle.UnpicklingError(f"a tensor rebuilt by {function!r} as {new_type!r}")
    return function(*args)


def _encode_latin1(text, encoding="latin1"):
    """`_codecs.encode`, which protocol-2 pickles use for bytes, for its latin-1 use only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _reconstructor(cls, base, state):
    """copyreg._reconstructor (protocol 0/1 objects): only stubs are reconstructed."""
    if isinstance(cls, type) and issubclass(cls, ForeignStub):
        return cls(state)
    raise pickle.UnpicklingError(f"copyreg._reconstructor of {cls!r}")


SAFE_GLOBALS = {
    "collections.OrderedDict": OrderedDict,
    "torch._utils._rebuild_tensor": _Frozen(_rebuild_tensor),
    "torch._utils._rebuild_tensor_v2": _Frozen(_rebuild_tensor),
    "torch._utils._rebuild_parameter": _Frozen(_rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _Frozen(_rebuild_parameter),
    "torch._tensor._rebuild_from_type_v2": _Frozen(_rebuild_from_type),
    "torch.Tensor": torch.Tensor,  # as _rebuild_from_type_v2's type argument
    "torch.nn.parameter.Parameter": torch.nn.Parameter,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.object": object,
    "_codecs.encode": _Frozen(_encode_latin1),
    "copyreg._reconstructor": _Frozen(_reconstructor),
}

# Modules (and torch names) whose callables can run code, read or write files, or load more
# pickles. Stubs would keep them inert anyway; naming one marks the file as hostile.
CODE_MODULES = frozenset("""
    os posix nt posixpath ntpath subprocess sys builtins __builtin__ importlib imp runpy shutil socket
    ctypes pty code codeop marshal types pickle _pickle cPickle copyreg functools operator io _io
    pathlib tempfile multiprocessing threading _thread signal webbrowser platform pdb bdb timeit
    cProfile profile trace doctest inspect asyncio select urllib http ftplib smtplib telnetlib requests
    glob fileinput zipimport pkgutil site distutils setuptools pip codecs _codecs gc resource
    torch.hub torch.jit torch._C torch.ops torch.package torch.serialization torch.utils.cpp_extension
    torch._dynamo torch._inductor torch.fx
""".split())  # noqa: SIM905  (a list of names reads better so)
CODE_NAMES = frozenset({"torch.load", "torch.storage._load_from_bytes", "torch.compile", "torch.save", "numpy.load",
                        "numpy.fromfile", "numpy.save", "numpy.loadtxt", "numpy.genfromtxt"})


def runs_code(module: str, name: str) -> bool:
    parts = module.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return bool(prefixes & CODE_MODULES) or f"{module}.{name}" in CODE_NAMES


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose globals are allowlisted, refused, or stubbed (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stubs: dict[str, type] = {}

    @property
    def persistent_load(self):
        return self._torch_persistent_load

    @persistent_load.setter
    def persistent_load(self, torch_persistent_load):
        """torch.load installs its storage loader here; records of pickled modules are refused."""
        def load(saved_id):
            if isinstance(saved_id, tuple) and saved_id and saved_id[0] in ("module", b"module"):
                raise pickle.UnpicklingError("a pickled nn.Module (not a state dict); refused")
            return torch_persistent_load(saved_id)

        self._torch_persistent_load = torch_persistent_load
        pickle.Unpickler.persistent_load.__set__(self, load)

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in SAFE_GLOBALS:
            return SAFE_GLOBALS[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if runs_code(module, name):
            raise HostilePickle(full)
        if full not in self._stubs:
            self._stubs[full] = make_stub_class(full)
        return self._stubs[full]


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load wants as `pickle_module`: an Unpickler class and a load function.
restricted_pickle = types.SimpleNamespace(__name__="advfeat.restricted_pickle", Unpickler=RestrictedUnpickler,
                                          load=_restricted_load)


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def _torch_load(path: Path, mmap: bool):
    return torch.load(path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False, mmap=mmap)


def read_torch_pickle(path: Path | str):
    """The object torch.save wrote to `path`, read by RestrictedUnpickler onto the CPU.

    Zip-format files are memory-mapped, so tensors the caller drops (optimizer state) are
    never read; legacy files are read once, storage by storage.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    is_zip = zipfile.is_zipfile(path)
    if is_zip and _is_torchscript(path):
        raise UserError(f"{path} is a TorchScript archive, which holds code; refused (not a checkpoint)")
    try:
        try:
            return _torch_load(path, mmap=is_zip)
        except RuntimeError:
            if not is_zip:
                raise
            return _torch_load(path, mmap=False)  # a zip file torch cannot map (unaligned records): read it
    except HostilePickle as err:
        raise UserError(f"{path}: refused: its pickle names {err}, which can run code "
                        f"(nothing from the file was run)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {first})") from None
