"""PyTorch's ``pytorch_model.bin`` read without torch (``tinygpt.torchfile``): both of ``torch.save``'s
layouts give torch's own values, ``GPT.from_pretrained`` loads such a directory as transformers does, and a
file that is damaged, holds anything but tensors, or would run code is one TinyGPTError, with nothing run."""

import collections
import io
import json
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
import torch

from tinygpt.errors import TinyGPTError
from tinygpt.gradcheck import relative_error
from tinygpt.model import GPT
from tinygpt.torchfile import read_checkpoint, read_state_dict

# torch.save's two layouts: the zip archive (PyTorch >= 1.6) and the legacy stream of pickles
LAYOUTS = {"zip": True, "legacy": False}


def save(obj, path, layout):
    torch.save(obj, path, _use_new_zipfile_serialization=LAYOUTS[layout])


def as_numpy(tensor):
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_dtype_comes_back_with_torchs_values(tmp_path, layout):
    # guards: half-precision tensors read as their 16-bit patterns, bfloat16 refused or widened wrongly,
    # float64 narrowed; bfloat16 becomes float32 exactly, the rest keep their dtype
    g = torch.Generator().manual_seed(0)
    state = {
        "f32": torch.randn(3, 5, generator=g), "f64": torch.randn(4, dtype=torch.float64, generator=g),
        "f16": torch.randn(2, 3, generator=g).half(), "bf16": torch.randn(3, 4, generator=g).bfloat16(),
        "i64": torch.arange(-3, 4), "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16), "i8": torch.arange(-2, 3, dtype=torch.int8),
        "u8": torch.tril(torch.ones(4, 4, dtype=torch.uint8)), "bool": torch.tril(torch.ones(3, 3)).bool(),
    }  # fmt: skip
    save(state, tmp_path / "w.bin", layout)
    loaded = read_state_dict(tmp_path / "w.bin")
    assert list(loaded) == list(state)  # the file's order
    for name, tensor in state.items():
        expected = as_numpy(tensor)
        assert loaded[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_views_of_one_storage_honour_offset_and_strides(tmp_path, layout):
    # guards: a view read from the start of its storage, or as if contiguous: a transposed matrix saved as
    # is, a row (offset), a column (stride), a step, a broadcast (stride 0), a scalar, an empty slice, all
    # views of one storage; and a bfloat16 / float16 view; every array a contiguous copy of its own
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g)
    state = {
        "whole": a, "transposed": a.t(), "row": a[2], "column": a[:, 1], "every_other": a[1::2, ::3],
        "broadcast": a[3:4].expand(5, 4), "scalar": a[1, 1], "empty": a[:0],
        "f16_transposed": torch.randn(3, 5, generator=g).half().t(),
        "bf16_strided": torch.randn(5, 3, generator=g).bfloat16()[::2, 1:],
    }  # fmt: skip
    save(state, tmp_path / "w.bin", layout)
    loaded = read_state_dict(tmp_path / "w.bin")
    for name, tensor in state.items():
        assert loaded[name].shape == tuple(tensor.shape), name
        np.testing.assert_array_equal(loaded[name], as_numpy(tensor), err_msg=name)
        assert loaded[name].flags.c_contiguous and loaded[name].flags.writeable, name
    loaded["whole"][0, 0] = 123.0  # copies, not views of one buffer
    assert loaded["transposed"][0, 0] != 123.0 and loaded["scalar"] != 123.0


def test_a_big_endian_zip_is_read_in_its_byte_order(tmp_path):
    # the byteorder record says how the storages' bytes lie; a "big" file (written on a big-endian
    # machine) read as little-endian gives garbage. The file is made here by rewriting a little-endian one,
    # and torch's own load of it is the reference.
    g = torch.Generator().manual_seed(0)
    state = {"f32": torch.randn(2, 3, generator=g), "f16": torch.randn(4, generator=g).half(),
             "bf16": torch.randn(3, generator=g).bfloat16(), "i64": torch.arange(-2, 2)}
    torch.save(state, tmp_path / "little.bin")
    itemsize = [t.element_size() for t in state.values()]  # storage keys "0", "1", ...: the dict's order
    with zipfile.ZipFile(tmp_path / "little.bin") as src, zipfile.ZipFile(tmp_path / "big.bin", "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:
                size = itemsize[int(name.rsplit("/", 1)[1])]
                data = np.frombuffer(data, f"<u{size}").astype(f">u{size}").tobytes()
            dst.writestr(name, data)
    reference = torch.load(tmp_path / "big.bin")
    loaded = read_state_dict(tmp_path / "big.bin")
    for name, tensor in state.items():
        torch.testing.assert_close(reference[name], tensor)
        np.testing.assert_array_equal(loaded[name], as_numpy(tensor), err_msg=name)
        assert loaded[name].dtype.isnative


# --- what is refused -----------------------------------------------------------------------------------


class RunsCode:
    """Pickles as a call of os.system: what a malicious .bin does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Evals:
    def __reduce__(self):
        return eval, ("__import__('os').getcwd()",)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, layout):
    marker = tmp_path / "it_ran"
    save({"wte.weight": torch.zeros(2), "x": RunsCode(marker)}, tmp_path / "evil.bin", layout)
    torch.load(tmp_path / "evil.bin", weights_only=False)  # the payload is real: an unrestricted load runs it
    assert marker.exists()
    marker.unlink()
    with pytest.raises(TinyGPTError, match=r"cannot read .*evil\.bin: refused to load posix\.system from"):
        read_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()
    save({"x": Evals()}, tmp_path / "evil.bin", layout)
    with pytest.raises(TinyGPTError, match=r"refused to load __builtin__\.eval"):  # (protocol 2's name)
        read_state_dict(tmp_path / "evil.bin")


def test_a_bare_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    # not a torch.save file at all: the first thing read is a pickle all the same
    marker = tmp_path / "it_ran"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    with pytest.raises(TinyGPTError, match=r"refused to load posix\.system"):
        read_state_dict(tmp_path / "evil.bin")
    assert not marker.exists()


def test_a_copyreg_extension_code_is_refused_even_when_the_process_has_one(tmp_path):
    # EXT1 240 names whatever copyreg.add_extension registered as 240, and once one load has resolved it the
    # C unpickler takes it from copyreg's cache without asking find_class: the allow-list alone let this
    # pickle call os.mkdir
    import copyreg
    import struct

    marker = tmp_path / "it_ran"
    copyreg.add_extension("os", "mkdir", 240)
    try:
        pickle.loads(b"\x80\x02\x82\xf0.")  # an ordinary load of the extension fills the cache
        path = str(marker).encode()
        payload = (b"\x80\x02\x82\xf0" + b"X" + struct.pack("<I", len(path)) + path  # EXT1 240, the path
                   + b"\x85R.")  # TUPLE1, REDUCE: os.mkdir(path)
        (tmp_path / "evil.bin").write_bytes(payload)
        with pytest.raises(TinyGPTError, match=r"evil\.bin: refused the pickle's EXT1 opcode"):
            read_state_dict(tmp_path / "evil.bin")
        assert not marker.exists()
    finally:
        copyreg.remove_extension("os", "mkdir", 240)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_what_is_not_a_dict_of_tensors_is_refused(tmp_path, layout):
    path = tmp_path / "w.bin"
    for obj, message in (
        ({"model": {"w": torch.zeros(2)}}, r"not a dict of tensors: 'model' holds a dict \(a training "),
        ({"w": torch.zeros(2), "step": 3}, "not a dict of tensors: 'step' holds int"),
        ([torch.zeros(2)], "the pickle holds a list, not a dict of tensors"),
        (torch.nn.Linear(2, 2), r"refused to load torch\.nn\.modules\.linear\.Linear"),  # torch.save(model)
        ({"w": torch.zeros(2, dtype=torch.complex64)}, r"torch\.ComplexFloatStorage .*a dtype tinygpt"),
        ({"w": torch._neg_view(torch.ones(2))}, r"metadata \{'neg': True\}"),  # values are minus the bytes
    ):
        save(obj, path, layout)
        with pytest.raises(TinyGPTError, match=message):
            read_state_dict(path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncated_and_foreign_files_are_one_error(tmp_path, layout):
    save({"a": torch.ones(1000), "b": torch.ones(10)}, tmp_path / "w.bin", layout)
    whole = (tmp_path / "w.bin").read_bytes()
    # cut inside the second storage's bytes, inside its element count, inside the pickle
    cuts = {len(whole) - 20: "cut short|truncated", len(whole) - 44: "element count|truncated",
            80: "corrupt pickle|truncated"}
    for cut, message in cuts.items():
        (tmp_path / "cut.bin").write_bytes(whole[:cut])
        with pytest.raises(TinyGPTError, match=rf"cannot read .*cut\.bin: .*({message})"):
            read_state_dict(tmp_path / "cut.bin")
    (tmp_path / "text.bin").write_text("weights: none\n")
    with pytest.raises(TinyGPTError, match="neither a zip archive nor a legacy torch.save file"):
        read_state_dict(tmp_path / "text.bin")
    with pytest.raises(TinyGPTError, match="No such file"):
        read_state_dict(tmp_path / "absent.bin")


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707\n"
               "size 548105171\n")


def test_a_git_lfs_pointer_is_named_with_how_to_fetch_the_weights(tmp_path):
    # guards: a repository cloned without Git LFS holds a three-line pointer where the weights belong, and
    # the reader's complaint ("neither a zip archive nor a legacy torch.save file", safetensors' "header too
    # large") said nothing of that
    from tinygpt.files import unreadable_weights

    (tmp_path / "pytorch_model.bin").write_text(LFS_POINTER)
    with pytest.raises(TinyGPTError, match=r"pytorch_model\.bin: it is a Git LFS pointer, not the weights "
                       r"\(the 548,105,171-byte file was not downloaded\): run `git lfs pull`"):
        read_state_dict(tmp_path / "pytorch_model.bin")
    (tmp_path / "ckpt.pt").write_text(LFS_POINTER.replace("size 548105171\n", ""))  # no size line
    with pytest.raises(TinyGPTError, match=r"ckpt\.pt: it is a Git LFS pointer, not the weights \(the file "):
        read_checkpoint(tmp_path / "ckpt.pt")
    # any other unreadable file keeps the reader's own reason
    assert unreadable_weights(tmp_path / "absent.bin", "why") == f"cannot read {tmp_path / 'absent.bin'}: why"


def _damage_zip_directory(whole: bytes, record: str, field: int, value: bytes) -> bytes:
    """``whole``, a torch.save file of w.bin, with ``value`` written at byte ``field`` of a record of the
    directory zipfile reads: "entry", w/data.pkl's central directory entry (PK\\x01\\x02, its name at
    byte 46), or "zip64 end", the zip64 end record (PK\\x06\\x06) that torch.save writes."""
    start = whole.rindex(b"w/data.pkl") - 46 if record == "entry" else whole.rindex(b"PK\x06\x06")
    assert whole[start : start + 4] in (b"PK\x01\x02", b"PK\x06\x06")
    return whole[: start + field] + value + whole[start + field + len(value) :]


@pytest.mark.parametrize("record, field, value, raised", [
    ("entry", 46 + len("w/"), b"\xff", "UnicodeDecodeError"),  # the name, no longer UTF-8 (torch flags it so)
    ("entry", 8, b"\x09\x08", "RuntimeError"),  # the flags: the record is encrypted
    ("entry", 10, b"\x09\x00", "NotImplementedError"),  # the compression: Deflate64, which zipfile lacks
    ("entry", 6, b"\xff\x00", "NotImplementedError"),  # the version needed to extract: 25.5
    ("zip64 end", 48, b"\x00" * 7 + b"\xff", "ValueError"),  # the directory's offset: past what a seek takes
])  # fmt: skip
def test_a_damaged_zip_directory_is_one_error_whatever_zipfile_raises(tmp_path, record, field, value, raised):
    # zipfile raises far more than BadZipFile for a damaged archive: each of these was a traceback out of
    # read_state_dict (and `tinygpt sample --pretrained DIR`), where every flaw is to be one TinyGPTError
    save({"w": torch.ones(4)}, tmp_path / "w.bin", "zip")
    damaged = _damage_zip_directory((tmp_path / "w.bin").read_bytes(), record, field, value)
    (tmp_path / "damaged.bin").write_bytes(damaged)
    with pytest.raises(TinyGPTError, match=rf"cannot read .*damaged\.bin: a corrupt or truncated zip archive "
                                           rf"\({raised}: "):
        read_state_dict(tmp_path / "damaged.bin")

class Storage:
    """Pickles as the persistent id torch gives a storage (see write_zip)."""

    def __init__(self, key, numel, kind="FloatStorage"):
        self.key, self.numel, self.kind = key, numel, kind


class Tensor:
    """Pickles as torch pickles a tensor: a call of _rebuild_tensor_v2 with any offset, size and stride."""

    def __init__(self, storage, offset, size, stride, state=None):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())
        self.state = state  # set on the rebuilt tensor by the pickle's BUILD

    def __reduce__(self):
        if self.state is None:
            return torch._utils._rebuild_tensor_v2, self.args
        return torch._utils._rebuild_tensor_v2, self.args, self.state


def write_zip(path, state, records):
    """A zip-layout torch.save file made by hand, for the flaws torch never writes: ``state``'s Tensors
    pickled as torch pickles them, ``records`` (key -> bytes) as the storages' records."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return "storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
        for key, data in records.items():
            archive.writestr(f"archive/data/{key}", data)


def test_hand_written_zip_matches_torch_load(tmp_path):
    # the helper below writes what torch reads: the refusals that use it test tinygpt, not the helper
    s = Storage("0", 6)
    records = {"0": np.arange(6.0, dtype="<f4").tobytes()}
    write_zip(tmp_path / "w.bin", {"w": Tensor(s, 1, (2, 2), (1, 3))}, records)
    expected = np.array([[1, 4], [2, 5]], np.float32)
    np.testing.assert_array_equal(torch.load(tmp_path / "w.bin")["w"].numpy(), expected)
    np.testing.assert_array_equal(read_state_dict(tmp_path / "w.bin")["w"], expected)


@pytest.mark.parametrize("offset, size, stride, message", [
    (5, (2,), (1,), "reaches past its storage's 6 elements"),  # elements 5 and 6
    (0, (2, 3), (3, 2), "reaches past"),  # the last element is 3 + 4 = 7
    (0, (3,), (-1,), "has size"),  # negative strides are not torch's
    (-1, (2,), (1,), "storage offset -1"),
    (0, (2**62, 2), (0, 1), "more than twice"),  # in bounds, but no array is that large
    (0, (2.0,), (1,), "has size"),
    # integers past int64 (a pickle's may have any length): a ValueError where the message printed one
    pytest.param(10**5000, (2,), (1,), r"storage offset <an integer of 16,610 bits>", id="huge-offset"),
    pytest.param(0, (10**5000,), (1,), r"has size \(<an integer of 16,610 bits>,\) and stride \(1,\)",
                 id="huge-size"),
    (0, (2**62,) * 300, (0,) * 300, "has size"),  # (their product, 5,600 digits, too long to print)
])  # fmt: skip
def test_a_view_outside_its_storage_is_refused(tmp_path, offset, size, stride, message):
    # as_strided reads wherever it is told: an unchecked offset or stride read memory past the file's
    s = Storage("0", 6)
    write_zip(tmp_path / "w.bin", {"w": Tensor(s, offset, size, stride)}, {"0": bytes(24)})
    with pytest.raises(TinyGPTError, match=message):
        read_state_dict(tmp_path / "w.bin")


def test_missing_or_wrong_sized_storage_records_are_refused(tmp_path):
    write_zip(tmp_path / "w.bin", {"w": Tensor(Storage("0", 10**5000), 0, (6,), (1,))}, {"0": bytes(24)})
    with pytest.raises(TinyGPTError, match=r"unexpected persistent id .*<an integer of 16,610 bit"):
        read_state_dict(tmp_path / "w.bin")  # (a ValueError printing its byte count: Python's 4,300 digits)
    s = Storage("0", 6)
    write_zip(tmp_path / "w.bin", {"w": Tensor(s, 0, (6,), (1,))}, {})
    with pytest.raises(TinyGPTError, match="the storage record archive/data/0 is missing"):
        read_state_dict(tmp_path / "w.bin")
    write_zip(tmp_path / "w.bin", {"w": Tensor(s, 0, (6,), (1,))}, {"0": bytes(20)})
    with pytest.raises(TinyGPTError, match="holds 20 bytes, the pickle says 24"):
        read_state_dict(tmp_path / "w.bin")
    as_double = Tensor(Storage("0", 3, "DoubleStorage"), 0, (3,), (1,))
    write_zip(tmp_path / "w.bin", {"w": Tensor(s, 0, (6,), (1,)), "v": as_double}, {"0": bytes(24)})
    with pytest.raises(TinyGPTError, match="storage 0 is described twice, differently"):
        read_state_dict(tmp_path / "w.bin")
    with zipfile.ZipFile(tmp_path / "w.bin", "w") as archive:  # no data.pkl: a zip, not torch's
        archive.writestr("archive/other.txt", "hello")
    with pytest.raises(TinyGPTError, match="without one FOLDER/data.pkl"):
        read_state_dict(tmp_path / "w.bin")


def write_legacy(path, state, keys, tail):
    """A legacy-layout torch.save file made by hand: the four pickles (``state``'s Tensors as torch pickles
    them, with the legacy persistent id's sixth item), the list of storage ``keys``, then ``tail``."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return "storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel, None
            return None

    buffer = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    Pickler(buffer, protocol=2).dump(state)
    pickle.dump(keys, buffer, protocol=2)
    path.write_bytes(buffer.getvalue() + tail)


def traced_peak(function):
    """The traced memory peak while ``function()`` runs, and what it raised."""
    tracemalloc.start()
    try:
        function()
    except Exception as exc:  # (returned, for the caller to check)
        return tracemalloc.get_traced_memory()[1], exc
    finally:
        tracemalloc.stop()
    return None, None


def test_sizes_a_file_claims_are_checked_before_they_are_allocated(tmp_path):
    # guards: the legacy layout read a storage's bytes with f.read(the pickle's size), which allocates that
    # size first: a 300-byte file claiming 1 GiB allocated 1 GiB (2**61 elements: an OverflowError, not a
    # TinyGPTError); a view with zero strides was copied out whole: 634 bytes asked for 64 GiB
    path = tmp_path / "w.bin"
    s = Storage("0", 6)
    write_legacy(path, {"w": Tensor(s, 0, (6,), (1,))}, ["0"], (6).to_bytes(8, "little") + bytes(24))
    assert torch.load(path)["w"].tolist() == read_state_dict(path)["w"].tolist() == [0.0] * 6  # the helper
    for numel in (2**28, 2**61):  # 1 GiB of float32, and a size no read can take
        write_legacy(path, {"w": Tensor(Storage("0", numel), 0, (6,), (1,))}, ["0"],
                     numel.to_bytes(8, "little") + bytes(24))
        peak, exc = traced_peak(lambda: read_state_dict(path))
        assert isinstance(exc, TinyGPTError) and "after its pickles are too few" in str(exc), exc
        assert peak < 2**20, peak
    write_zip(path, {"w": Tensor(s, 0, (2**12, 2**12), (0, 0))}, {"0": bytes(24)})  # 64 MiB from 24 bytes
    assert torch.load(path)["w"].shape == (2**12, 2**12)  # (torch's view shares the storage)
    peak, exc = traced_peak(lambda: read_state_dict(path))
    assert isinstance(exc, TinyGPTError) and "more than twice the 6 of the storages" in str(exc), exc
    assert peak < 2**20, peak
    views = {name: Tensor(s, 0, (6,), (1,)) for name in ("w", "tied", "third")}  # (each view costs ~10 bytes)
    write_zip(path, views, {"0": bytes(24)})
    with pytest.raises(TinyGPTError, match="its tensors hold 18 elements, more than twice the 6"):
        read_state_dict(path)
    write_zip(path, {name: views[name] for name in ("w", "tied")}, {"0": bytes(24)})
    assert set(read_state_dict(path)) == {"w", "tied"}  # a tied weight's two views of one storage load


def test_odd_sizes_and_keys_are_read_or_refused_in_one_line(tmp_path):
    # guards: tracebacks from a corrupt file: a dimension of size 1 with a stride past NumPy's int64
    # (OverflowError; it never steps, so it reads as torch reads it), an empty tensor too large to shape
    # (ValueError), a legacy list of keys holding a list (TypeError: unhashable) or nested too deep to print
    # (RecursionError)
    path = tmp_path / "w.bin"
    s = Storage("0", 6)
    records = {"0": np.arange(6.0, dtype="<f4").tobytes()}
    write_zip(path, {"w": Tensor(s, 1, (1, 2), (2**62, 1))}, records)
    assert torch.load(path)["w"].tolist() == read_state_dict(path)["w"].tolist() == [[1.0, 2.0]]
    write_zip(path, {"w": Tensor(s, 0, (0, 2**62, 2**62), (1, 1, 1))}, records)
    with pytest.raises(TinyGPTError, match="has size .*too big"):
        read_state_dict(path)
    write_legacy(path, {"w": Tensor(s, 0, (6,), (1,))}, [["0"]], b"")
    with pytest.raises(TinyGPTError, match=r"the list of storage keys \[\['0'\]\] does not match"):
        read_state_dict(path)
    write_legacy(path, {"w": Tensor(s, 0, (6,), (1,))}, ["0"], b"")
    keys_pickle = pickle.dumps(["0"], protocol=2)
    nested = b"\x80\x02)" + b"\x85" * 100_000 + b"."  # ((((...),),),), 100,000 deep (pickle.dumps recurses)
    path.write_bytes(path.read_bytes().removesuffix(keys_pickle) + nested)
    with pytest.raises(TinyGPTError, match=r"the list of storage keys \(\(\(.*\) does not match"):
        read_state_dict(path)


def test_a_pickle_cannot_set_attributes_on_what_it_is_given(tmp_path):
    # guards: a pickle's BUILD opcode sets attributes on any object it holds: on a tensor after its offset
    # and strides were checked (a negative stride then reads memory before the storage), or on the
    # stand-ins shared by every load (torch.FloatStorage's dtype, a rebuild function's defaults), which
    # would change what every later load in the process reads
    path = tmp_path / "w.bin"
    for state in ((None, {"stride": (-4,)}), {"offset": -8}):  # the setattr form and the __dict__ form
        write_zip(path, {"w": Tensor(Storage("0", 6), 5, (3,), (1,), state)}, {"0": bytes(24)})
        with pytest.raises(TinyGPTError, match="corrupt pickle"):
            read_state_dict(path)
    setters = (b"}X\x05\x00\x00\x00dtypeX\x05\x00\x00\x00uint8sb",  # {"dtype": "uint8"}
               b"N}X\x05\x00\x00\x00dtypeX\x05\x00\x00\x00uint8s\x86b",  # (None, {"dtype": "uint8"})
               b"N}X\x0c\x00\x00\x00__defaults__(\x88NNts\x86b")  # (None, {"__defaults__": (True,) + ...})
    for name in (b"torch\nFloatStorage", b"torch._utils\n_rebuild_tensor_v2", b"collections\nOrderedDict"):
        for setter in setters:
            path.write_bytes(b"\x80\x02c" + name + b"\n" + setter + b".")  # GLOBAL name, then BUILD
            with pytest.raises(TinyGPTError, match="corrupt pickle .*(attribute|item assignment)"):
                read_state_dict(path)
    state = {"w": torch.arange(6.0).view(2, 3).t()}
    save(state, path, "zip")
    np.testing.assert_array_equal(read_state_dict(path)["w"], state["w"].numpy())  # read as before


# --- GPT.from_pretrained on a directory with pytorch_model.bin -----------------------------------------


@pytest.fixture
def tiny_gpt2(make_random_hf_gpt2):
    """Builds a random GPT2LMHeadModel with non-zero biases and LayerNorm affines (as test_torch_parity's)."""
    return lambda: make_random_hf_gpt2(vocab_size=67, block_size=16, n_layer=2, n_head=4, n_embd=32,
                                       perturb_affines=True)


def assert_params_equal(model, state):
    """``model``'s parameters are ``state``'s tensors (GPT-2 names, the tied lm_head left out)."""
    for name, p in state.items():
        if name != "lm_head.weight":
            ours = model.params[name.removeprefix("transformer.")]
            np.testing.assert_array_equal(ours, p.numpy(), err_msg=name)


def save_bin_dir(model, path, layout, state=None):
    """A transformers directory as older transformers (save_pretrained with safe_serialization=False)
    wrote it: config.json and the state dict, tied lm_head.weight included, in pytorch_model.bin."""
    model.config.save_pretrained(path)
    save(model.state_dict() if state is None else state, path / "pytorch_model.bin", layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_pytorch_model_bin_gives_transformers_logits(tmp_path, layout, tiny_gpt2):
    # guards: the .bin refused ("PyTorch .bin checkpoints are not supported"), or read with the tied
    # lm_head's shared storage, strides or offsets wrong
    model = tiny_gpt2()
    save_bin_dir(model, tmp_path, layout)
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()  # one storage
    ours = GPT.from_pretrained(tmp_path).eval()
    assert_params_equal(ours, state)
    idx = np.random.default_rng(1).integers(0, 67, (3, 12))
    with torch.no_grad():
        ref = model(torch.from_numpy(idx)).logits.numpy()
    assert relative_error(ours.forward(idx)[0], ref) < 1e-5


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_original_gpt2_layout_loads(tmp_path, layout, tiny_gpt2):
    # the original GPT-2 files: GPT2Model's names (no "transformer." prefix), float causal-mask buffers
    # (attn.bias, a (1, 1, T, T) tril) and the masked_bias scalar, which are skipped
    model = tiny_gpt2()
    state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
    del state["lm_head.weight"]
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_bin_dir(model, tmp_path, layout, state)
    ours = GPT.from_pretrained(tmp_path)
    for name, p in ours.params.items():
        np.testing.assert_array_equal(p, state[name].numpy(), err_msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_sharded_pytorch_checkpoint_loads_every_shard(tmp_path, layout, tiny_gpt2):
    # pytorch_model.bin.index.json maps each tensor to one of several .bin files, as transformers shards
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    state = model.state_dict()
    names = list(state)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):
        file = f"pytorch_model-0000{i + 1}-of-00002.bin"
        save({k: state[k] for k in part}, tmp_path / file, layout)
        weight_map.update(dict.fromkeys(part, file))
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_params_equal(GPT.from_pretrained(tmp_path), state)
    index.write_text(json.dumps({"weight_map": [1]}))
    with pytest.raises(TinyGPTError, match="is not a valid PyTorch index"):
        GPT.from_pretrained(tmp_path)


def test_model_safetensors_is_preferred_to_pytorch_model_bin(tmp_path, tiny_gpt2):
    # transformers' order: the safetensors file, then its index, then the .bin, then the .bin's index
    model = tiny_gpt2()
    save_bin_dir(model, tmp_path, "zip")
    from_bin = GPT.from_pretrained(tmp_path)
    other = GPT(from_bin.config, seed=1)
    other.save_pretrained(tmp_path)  # model.safetensors beside pytorch_model.bin
    for name, p in GPT.from_pretrained(tmp_path).params.items():
        np.testing.assert_array_equal(p, other.params[name], err_msg=name)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin.index.json").write_text("{not json")  # the single .bin comes first
    assert_params_equal(GPT.from_pretrained(tmp_path), model.state_dict())
    (tmp_path / "pytorch_model.bin").unlink()
    (tmp_path / "pytorch_model.bin.index.json").unlink()
    with pytest.raises(TinyGPTError, match="has no model.safetensors or pytorch_model.bin"):
        GPT.from_pretrained(tmp_path)


def test_sample_refuses_a_malicious_bin_in_one_line(tmp_path, capsys, tiny_gpt2):
    from tinygpt.cli import main

    marker = tmp_path / "it_ran"
    tiny_gpt2().config.save_pretrained(tmp_path)
    save({"x": RunsCode(marker)}, tmp_path / "pytorch_model.bin", "zip")
    assert main(["sample", "--pretrained", str(tmp_path), "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused to load posix.system" in err, err
    assert not marker.exists()


def test_a_pickle_of_one_tuple_shared_over_and_over_is_refused_before_it_is_hashed(tmp_path):
    from conftest import shared_tuple_pickle

    # a dict key of 2**25 tuples when walked, in 300 bytes: the check counts it before the unpickler hashes
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", shared_tuple_pickle(25, "model"))
    for read in (read_state_dict, read_checkpoint):
        with pytest.raises(TinyGPTError, match=r"pytorch_model\.bin: refused the pickle: an object in it is "
                                               r"more than 16,777,216 objects"):
            read(path)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_pickle_whose_lists_are_filled_after_they_were_nested_is_counted_in_full(tmp_path, kind):
    from conftest import filled_after_nesting_pickle

    from tinygpt.torchfile import check_pickle_opcodes

    # 2**25 - 1 objects when walked in 600 bytes (2**41 in 1 KB at 40 levels): each list was counted when it
    # went into the one above it, still empty, and what it was filled with afterwards was never added there
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", filled_after_nesting_pickle(24, kind))
    for read in (read_state_dict, read_checkpoint):
        with pytest.raises(TinyGPTError, match=r"pytorch_model\.bin: refused the pickle: an object in it is "
                                               r"more than 16,777,216 objects"):
            read(path)
    # just under the limit is allowed: 2**24 - 1 lists, 2**24 - 3 dicts and keys
    check_pickle_opcodes(io.BytesIO(filled_after_nesting_pickle({"list": 23, "dict": 22}[kind], kind)))
    # one list used 4,097 times (memo GETs into a tuple), then filled with 4,097 items: 1 + 4,097 * 4,098
    shared = (b"\x80\x02]q\x00(" + b"h\x00" * 4097 + b"tq\x010h\x00(" + b"K\x07" * 4097 + b"e0h\x01.")
    assert pickle.loads(shared)[4096] == [7] * 4097  # (what it is: the tuple, its list filled)
    with pytest.raises(TinyGPTError, match="more than 16,777,216 objects"):
        check_pickle_opcodes(io.BytesIO(shared))
    check_pickle_opcodes(io.BytesIO(shared.replace(b"K\x07" * 4097, b"K\x07" * 4094)))  # 1 + 4,097 * 4,095


def test_a_pickle_whose_objects_hold_each_other_passes_the_walk_count():
    from tinygpt.torchfile import check_pickle_opcodes

    # each is filled after it went into the other (the pickler writes a cycle so): a walk stops where the
    # cycle closes, as repr's [...] does, so these are a few objects, not an endless count
    mine, yours = [], {}
    mine.append(mine)
    yours["mine"], yours["me"] = [yours, mine], yours
    for obj in (mine, yours, [mine, yours] * 1000):
        check_pickle_opcodes(io.BytesIO(pickle.dumps(obj, protocol=2)))


def hiding(obj, *methods):
    """The pickle of ``obj`` (an OrderedDict) and then a BUILD setting each of ``methods`` on it to the
    OrderedDict class, an allowed global: an instance attribute, which hides the method of that name."""
    state = b"}(" + b"".join(b"X" + len(m).to_bytes(4, "little") + m.encode() + b"ccollections\nOrderedDict\n"
                             for m in methods) + b"u"
    return pickle.dumps(obj, protocol=2)[:-1] + state + b"b."


def test_an_ordered_dict_whose_methods_a_pickle_hid_is_read_by_dicts_own(tmp_path):
    # state dicts are OrderedDicts, whose BUILD (their _metadata) may set any attribute: one named items
    # made a dict of an int read as an empty state dict, and then an AttributeError, not one line
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", hiding(collections.OrderedDict(w=5), "items"))
    with pytest.raises(TinyGPTError, match=r"not a dict of tensors: 'w' holds int"):
        read_state_dict(path)
    # and keys and values hidden made the class inside an entry plain data, as if the entry were empty
    entry = hiding(collections.OrderedDict(x=collections.OrderedDict), "keys", "values", "items")
    checkpoint = b"\x80\x02}(X\x05\x00\x00\x00model}X\x05\x00\x00\x00entry" + entry[2:-1] + b"u."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", checkpoint)
    assert pickle.loads(checkpoint)["entry"].__dict__  # (the attributes are there: the test tests)
    assert read_checkpoint(path) == ({}, {})
    # an entry that is such an OrderedDict is left out, whatever it holds: nanoGPT's model_args with its get
    # hidden was a TypeError traceback, model_args.get("bias", True) calling OrderedDict("bias", True)
    args = hiding(collections.OrderedDict(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=5), "get")
    checkpoint = b"\x80\x02}(X\x05\x00\x00\x00model}X\x0a\x00\x00\x00model_args" + args[2:-1] + b"u."
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", checkpoint)
    assert read_checkpoint(path) == ({}, {})
    with pytest.raises(TinyGPTError, match=r"pytorch_model\.bin has no model_args dict"):
        GPT.from_pretrained(path)


# --- nanoGPT's ckpt.pt ---------------------------------------------------------------------------------
# (save_nanogpt_ckpt in conftest.py writes one as nanoGPT's train.py does, after an AdamW step)


def test_a_nanogpt_checkpoint_gives_its_state_dict_and_plain_entries_not_the_optimizers_bytes(
        tmp_path, make_nanogpt_ckpt, monkeypatch):
    model = make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=67, block_size=8)
    state = model.state_dict()
    # the storages read, by record name: the model's (wte and lm_head share one), never the optimizer's
    read = []
    original = zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name, *a: read.append(name) or
                        original(self, name, *a))
    arrays, entries = read_checkpoint(tmp_path / "ckpt.pt")
    assert list(arrays) == list(state)
    for name, tensor in state.items():
        np.testing.assert_array_equal(arrays[name], tensor.numpy(), err_msg=name)
    assert entries == {"model_args": {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 8, "bias": True,
                                      "vocab_size": 67, "dropout": 0.0},
                       "iter_num": 1, "config": {"out_dir": "out", "batch_size": 2, "dtype": "float32",
                                                 "learning_rate": 1e-3, "compile": False,
                                                 "dataset": "openwebtext"}}
    storages = {t.untyped_storage().data_ptr() for t in state.values()}
    data_records = [name for name in read if "/data/" in name]
    with zipfile.ZipFile(tmp_path / "ckpt.pt") as archive:
        stored = [name for name in archive.namelist() if "/data/" in name]
    assert len(data_records) == len(storages) and len(stored) > 2 * len(storages)  # + m, v, steps, loss


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_checkpoint_with_a_malicious_global_anywhere_is_refused_and_runs_nothing(tmp_path, layout):
    # the optimizer's state and the config are unpickled too (then left out): a global there is refused
    marker = tmp_path / "it_ran"
    for where in ("optimizer", "config", "model_args"):
        checkpoint = {"model": {"transformer.wte.weight": torch.zeros(2, 2)}, "model_args": {},
                      "optimizer": {"state": {}, "param_groups": []}, "config": {}}
        checkpoint[where] = {"x": RunsCode(marker)}
        save(checkpoint, tmp_path / "ckpt.pt", layout)
        with pytest.raises(TinyGPTError, match=r"cannot read .*ckpt\.pt: refused to load posix\.system"):
            read_checkpoint(tmp_path / "ckpt.pt")
        assert not marker.exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_tensor_deep_in_an_entry_leaves_the_entry_out(tmp_path, layout):
    # two dicts deep, as AdamW's moments sit in optimizer['state'][0]: the walk once took the second dict's
    # first pair for the first's (the same address, reused) and passed the tensor as plain data
    path = tmp_path / "ckpt.pt"
    save({"model": {"w": torch.zeros(2)}, "state": {"a": {"b": torch.ones(1)}},
          "optimizer": {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}},
                        "param_groups": [{"lr": 1e-3, "params": [0]}]},
          "plain": {"a": {"b": [1, (2.0, None)]}}, "iter_num": 3}, path, layout)
    assert read_checkpoint(path)[1] == {"plain": {"a": {"b": [1, (2.0, None)]}}, "iter_num": 3}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_what_is_not_a_checkpoint_is_refused(tmp_path, layout):
    path = tmp_path / "ckpt.pt"
    loop = []
    loop.append(loop)  # a list holding itself is plain data, and its walk ends
    save({"model": {"w": torch.zeros(2)}, "loop": loop, "loss": torch.tensor(1.0)}, path, layout)
    arrays, entries = read_checkpoint(path)
    assert list(arrays) == ["w"] and list(entries) == ["loop"]
    for obj, message in (
        ({"w": torch.zeros(2)}, r"the pickle holds a dict of 'w', not a checkpoint with a 'model' entry"),
        ([torch.zeros(2)], r"the pickle holds a list, not a checkpoint"),
        ({"model": [torch.zeros(2)]}, r"the pickle holds a list, not a dict of tensors"),
        ({"model": {"w": torch.zeros(2), "step": 3}}, r"'step' holds int"),
    ):
        save(obj, path, layout)
        with pytest.raises(TinyGPTError, match=message):
            read_checkpoint(path)


@pytest.mark.parametrize("shape", [
    dict(vocab_size=50304, block_size=8, n_embd=8),  # GPT-2's vocabulary padded, as nanoGPT's runs have it
    dict(vocab_size=67, block_size=16, n_layer=3, n_head=4, n_embd=16, bias=False, compiled=True),
    dict(vocab_size=67, block_size=16, n_embd=16, as_out_dir=True),
])
def test_a_nanogpt_checkpoint_loads_with_its_logits(tmp_path, make_nanogpt_ckpt, shape):
    # nn.Linear weights (out, in) transposed, c_proj's square ones too; no biases with bias=False; the
    # _orig_mod. prefix of a torch.compile'd model dropped; the exact GELU (tanh's: 2e-4 off here)
    shape = dict(shape)
    as_out_dir = shape.pop("as_out_dir", False)
    model = make_nanogpt_ckpt(tmp_path / "ckpt.pt", **shape)
    ours = GPT.from_pretrained(tmp_path if as_out_dir else tmp_path / "ckpt.pt").eval()
    assert ours.config.gelu == "erf" and ours.config.bias == shape.get("bias", True)
    assert ours.config.vocab_size == shape["vocab_size"] and ours.config.n_layer == shape.get("n_layer", 2)
    for name, p in model.state_dict().items():
        if name != "lm_head.weight":
            name = name.removeprefix("transformer.")
            ours_p = ours.params[name].T if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) \
                else ours.params[name]
            np.testing.assert_array_equal(ours_p, p.numpy(), err_msg=name)
    idx = np.random.default_rng(1).integers(0, shape["vocab_size"], (2, shape["block_size"]))
    with torch.no_grad():
        ref = model(torch.from_numpy(idx)).numpy()
    assert relative_error(ours.forward(idx)[0], ref) < 1e-5


def test_a_damaged_nanogpt_checkpoint_is_one_error(tmp_path, make_nanogpt_ckpt):
    path = tmp_path / "ckpt.pt"
    make_nanogpt_ckpt(path, vocab_size=67, block_size=8)
    good = torch.load(path, weights_only=True)

    def fails(change, message):
        checkpoint = {**good, "model": dict(good["model"]), "model_args": dict(good["model_args"])}
        change(checkpoint)
        torch.save(checkpoint, path)
        with pytest.raises(TinyGPTError, match=message):
            GPT.from_pretrained(path)

    fails(lambda c: c["model"].pop("transformer.h.1.mlp.c_fc.bias"),
          r"ckpt\.pt is missing 'transformer\.h\.1\.mlp\.c_fc\.bias' \(the weights hold 28 tensors, "
          r"layers h\.0 to h\.1\)$")
    fails(lambda c: [c["model"].pop(k) for k in list(c["model"]) if k.startswith("transformer.h.1.")],
          r"ckpt\.pt is missing layer h\.1 \(no tensor named transformer\.h\.1\.\*\), where model_args has "
          r"n_layer = 2: the weights hold 17 tensors, layer h\.0$")  # (a layer lost: 'is missing h.1')
    # a gap: layers h.0 and h.2 under n_layer 2 lack h.1, where the message was "holds h.2, past model_args'
    # n_layer = 2 (the weights hold 2 layers)"; h.1 alone under n_layer 1 lacks h.0 (it said "the weights
    # hold 1 layers")
    fails(lambda c: c["model"].update({k.replace(".h.1.", ".h.2."): c["model"].pop(k)
                                       for k in list(c["model"]) if k.startswith("transformer.h.1.")}),
          r"ckpt\.pt is missing layer h\.1 \(no tensor named transformer\.h\.1\.\*\), where model_args has "
          r"n_layer = 2: the weights hold 29 tensors, layers h\.0, h\.2$")
    fails(lambda c: ([c["model"].pop(k) for k in list(c["model"]) if k.startswith("transformer.h.0.")],
                     c["model_args"].update(n_layer=1)),
          r"ckpt\.pt is missing layer h\.0 \(no tensor named transformer\.h\.0\.\*\), where model_args has "
          r"n_layer = 1: the weights hold 17 tensors, layer h\.1$")
    fails(lambda c: c["model_args"].update(n_layer=1), r"ckpt\.pt holds h\.1, past model_args's n_layer = 1 "
          r"\(the weights hold 29 tensors, layers h\.0 to h\.1\)$")
    fails(lambda c: c["model"].update({"transformer.h.0.attn.c_proj.weight": torch.zeros(16, 17)}),
          r"'transformer\.h\.0\.attn\.c_proj\.weight' has shape \(16, 17\), expected \(16, 16\)")
    fails(lambda c: c["model"].update({"transformer.h.0.mlp.c_fc.weight": torch.zeros(16, 64)}),  # (in, out)
          r"'transformer\.h\.0\.mlp\.c_fc\.weight' has shape \(16, 64\), expected \(64, 16\)")
    fails(lambda c: c["model"].update({"lm_head.weight": torch.ones(67, 16)}), "lm_head.weight differs")
    fails(lambda c: c["model"].update({"transformer.h.0.extra": torch.ones(1)}), "unexpected tensor")
    fails(lambda c: c["model_args"].update(n_layer=3), r"ckpt\.pt is missing layer h\.2 .* where model_args "
          r"has n_layer = 3: the weights hold 29 tensors, layers h\.0 to h\.1$")
    fails(lambda c: c["model_args"].update(bias=False), r"unexpected tensor 'transformer\.h\.0\.ln_1\.bias'")
    fails(lambda c: c["model_args"].pop("n_embd"), r"ckpt\.pt: model_args is missing n_embd")
    fails(lambda c: c["model_args"].update(n_head=3), r"ckpt\.pt: GPTConfig\.n_embd \(16\) must be divisible")
    fails(lambda c: c["model_args"].update(vocab_size="67"), r"model_args' vocab_size must be a 64-bit integ")
    # too long for Python to print (4,300 digits at most): the message was a ValueError
    fails(lambda c: c["model_args"].update(dropout=10**5000),
          r"model_args' dropout must be a number in \[0, 1\), got <an integer of 16,610 bits>")
    fails(lambda c: c["model_args"].update(dropout=1.5), r"model_args' dropout must be a number in \[0, 1\)")
    fails(lambda c: c["model_args"].update(n_embd=10**5000),
          r"model_args' n_embd must be a 64-bit integer, got <an integer of 16,610 bits>")
    shared = []
    for _ in range(22):  # a list of a list twice, 22 deep: 2**22 lists to print in full; shown cut short
        shared = [shared, shared]
    fails(lambda c: c["model_args"].update(n_layer=shared),
          r"n_layer must be a 64-bit integer, got \[\[\[\[\[\[\[\.\.\.\]")
    fails(lambda c: c.pop("model_args"), r"ckpt\.pt has no model_args dict")
    fails(lambda c: c.pop("model"), r"not a checkpoint with a 'model' entry")
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TinyGPTError, match=r"cannot read .*ckpt\.pt: neither a zip archive"):
        GPT.from_pretrained(tmp_path)  # (the out_dir: its ckpt.pt)
    (tmp_path / "ckpt.pt").unlink()
    with pytest.raises(TinyGPTError, match=r"has no config\.json \(a transformers GPT-2 directory\) nor"):
        GPT.from_pretrained(tmp_path)


def test_a_file_of_a_transformers_directory_given_as_the_model_names_the_directory(tmp_path, make_hf_gpt2,
                                                                                   make_nanogpt_ckpt, capsys):
    # any other file is read as nanoGPT's ckpt.pt, so model.safetensors was "neither a zip archive nor a
    # legacy torch.save file": the user meant its directory
    from tinygpt.cli import main

    make_hf_gpt2(tmp_path, vocab_size=67, block_size=8)
    GPT.from_pretrained(tmp_path)  # the directory loads
    for name in ("model.safetensors", "config.json"):
        with pytest.raises(TinyGPTError, match=f"{name} is a file of a transformers model directory: give "
                                               f"the directory, {tmp_path}$"):
            GPT.from_pretrained(tmp_path / name)
    for name in ("pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "model.safetensors.index.json"):
        (tmp_path / name).write_bytes(b"")  # (beside config.json)
        with pytest.raises(TinyGPTError, match="is a file of a transformers model directory"):
            GPT.from_pretrained(tmp_path / name)
    make_nanogpt_ckpt(tmp_path / "ckpt.pt", vocab_size=67, block_size=8)  # named, it is read even there
    assert GPT.from_pretrained(tmp_path / "ckpt.pt").config.gelu == "erf"
    alone = tmp_path / "alone"  # away from a config.json, any other file is still read as a ckpt.pt
    alone.mkdir()
    (alone / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(TinyGPTError, match="neither a zip archive nor a legacy torch.save file"):
        GPT.from_pretrained(alone / "pytorch_model.bin")
    capsys.readouterr()  # (transformers' progress bar, from saving the model)
    assert main(["sample", "--pretrained", str(tmp_path / "model.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give the directory" in err
