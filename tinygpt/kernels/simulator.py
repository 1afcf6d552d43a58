"""Two mends to numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), where the CUDA kernels run without a GPU.

The simulator runs each CUDA thread of a block as an OS thread and each array as a NumPy array. Two of its
behaviours differ from a GPU's in ways that matter here:

1. **Shared arrays can come out unshared** (a race in the simulator). ``cuda.shared.array`` is a
   check-then-set on a dict keyed by the calling source line: the first thread of a block to reach the line
   finds no entry and stores a new array, the others get that one. Nothing locks the two steps, so a thread
   preempted between them (the GIL changes hands every switch interval) lets a second thread store a second
   array; the block's threads then write into different "shared" arrays and a reduction reads garbage: a
   wrong result, not an error, and rare, since the window is a few bytecodes wide. With a GIL release
   forced into that window a LayerNorm launch fails every time. ``make_shared_arrays_thread_safe`` puts the
   two steps under a lock. ``tinygpt.kernels.cuda`` calls it on import whenever the simulator is on, so
   simulated training, the tests and the notebooks all get it.

2. **A negative index wraps around** (NumPy's rule). On a GPU, index -1 reads or writes outside the array;
   in the simulator it quietly reads the last element, so a kernel with an off-by-one on a ragged edge
   passes every simulator test. ``make_indices_strict`` makes device, shared and local arrays raise
   IndexError at a negative index instead. It costs time on every access, so only the tests call it.

Both patch numba's simulator classes in place, for the whole process; each does so once, however often it
is called. They leave a real GPU alone.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

_PATCHED: set[str] = set()  # which of the two mends this process has made (each is made once)
_PATCH_LOCK = threading.Lock()


class NonNegativeIndexArray(np.ndarray):
    """A simulated shared or local array that raises IndexError at a negative index, as a GPU can't wrap."""

    def __getitem__(self, idx):
        check_kernel_index(idx)
        return np.ndarray.__getitem__(self, idx)

    def __setitem__(self, idx, value):
        check_kernel_index(idx)
        np.ndarray.__setitem__(self, idx, value)


def check_kernel_index(idx) -> None:
    """IndexError if any integer in ``idx`` (an index or a tuple of them) is negative."""
    for i in idx if isinstance(idx, tuple) else (idx,):
        if isinstance(i, (int, np.integer)) and i < 0:
            raise IndexError(f"negative index {idx} in a kernel: the simulator wraps it around (NumPy), "
                             "a GPU reads or writes outside the array")


def make_shared_arrays_thread_safe() -> None:
    """Serialise the simulator's ``cuda.shared.array`` (mend 1 of the module docstring)."""
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    with _PATCH_LOCK:
        if "shared" in _PATCHED:
            return
        _PATCHED.add("shared")
    original = kernelapi.FakeCUDAShared.array
    allocation_lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0:  # dynamic shared memory: one preallocated buffer, nothing to race on
            return original(self, shape, dtype)
        caller = sys._getframe(1)  # the simulator's own key: the kernel's source line
        key = (caller.f_code.co_filename, caller.f_lineno)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        with allocation_lock:
            if key not in self._allocations:
                new = np.empty(shape, dtype)
                self._allocations[key] = new.view(NonNegativeIndexArray) if "strict" in _PATCHED else new
            return self._allocations[key]

    array.unlocked = original  # for the test that shows the race this closes
    kernelapi.FakeCUDAShared.array = array


def make_indices_strict() -> None:
    """Make simulated device, shared and local arrays reject negative indices (mend 2)."""
    from numba.cuda.simulator import kernelapi
    from numba.cuda.simulator.cudadrv import devicearray

    make_shared_arrays_thread_safe()  # the shared arrays it makes are strict from now on
    with _PATCH_LOCK:
        if "strict" in _PATCHED:
            return
        _PATCHED.add("strict")
    fake = devicearray.FakeCUDAArray
    get, set_ = fake.__getitem__, fake.__setitem__

    def getitem(self, idx):
        check_kernel_index(idx)
        return get(self, idx)

    def setitem(self, idx, value):
        check_kernel_index(idx)
        return set_(self, idx, value)

    fake.__getitem__, fake.__setitem__ = getitem, setitem
    make_local = kernelapi.FakeCUDALocal.array
    kernelapi.FakeCUDALocal.array = lambda self, shape, dtype: make_local(self, shape, dtype).view(
        NonNegativeIndexArray)
