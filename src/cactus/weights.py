"""The weight directory: a safetensors file read through mmap, and a streaming writer for it.

Reading parses the safetensors header ourselves so every tensor is a zero-copy numpy view of
the mapped file, and validates each entry (dtype, shape, byte range) before anything uses it.
Writing streams one tensor at a time, so converting a 24B model never holds it in memory.
The layout of our quantized tensors inside the container is in docs/FORMAT.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import mmap
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .quant import FORMATS, QTensor, float_format, padded

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ALIGN = 64  # every tensor starts on a 64-byte boundary of the file (cache line / AVX-512 load)
MAX_HEADER = 100 << 20

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "U16": np.uint16, "U32": np.uint32, "BOOL": np.bool_,
}
_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
          np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64"}


class WeightError(ValueError):
    """A weight file or tensor that is missing, truncated or not what the model needs."""


class NoSpaceError(OSError):
    """The disk cannot hold a weight file being written."""


# ----------------------------------------------------------------------------- reading

def _huge_pages(m: mmap.mmap) -> None:
    """Ask for 2 MiB mappings of the weights. Where the filesystem keeps the file in large folios
    (ext4 and xfs on Linux 6.x: files just written, or read after this call) the kernel then maps
    them with PMDs: no TLB miss per 4 KiB, physically contiguous 2 MiB runs. Measured on this
    machine's page cache: 4 KiB-mapped file pages read at 43 GB/s where anonymous memory read at 55;
    PMD-mapped, at the same speed as anonymous memory. A no-op where unsupported."""
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass


class SafetensorsFile:
    """Zero-copy views of every tensor in one .safetensors file. The file stays open (closed with
    this object) so that check_in_place() can tell whether the mapped file itself was written over."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fd = fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise WeightError(f"{self.path}: no such weight file") from None
        weakref.finalize(self, os.close, fd)
        st = os.fstat(fd)
        self.identity = _identity(st)  # (dev, inode, size, mtime) of the file mapped
        size = st.st_size
        if size < 8:
            raise WeightError(f"{self.path}: truncated ({size} bytes, no safetensors header)")
        self._mmap = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        _huge_pages(self._mmap)
        (hlen,) = struct.unpack("<Q", self._mmap[:8])
        if hlen > MAX_HEADER or 8 + hlen > size:
            raise WeightError(f"{self.path}: truncated or corrupt header (header length {hlen}, file {size} bytes)")
        try:
            header = json.loads(bytes(self._mmap[8:8 + hlen]))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
            raise WeightError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise WeightError(f"{self.path}: header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise WeightError(f"{self.path}: __metadata__ must be an object of strings")
        base = 8 + hlen
        buf = memoryview(self._mmap)
        self.tensors: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, str] = {}
        for name, info in header.items():
            try:
                dtype, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise WeightError(f"{self.path}: tensor '{name}' has a malformed header entry") from None
            if not all(type(v) is int for v in (*shape, begin, end)):  # JSON ints only: no floats, strings, bools
                raise WeightError(f"{self.path}: tensor '{name}': shape and data_offsets must be integers")
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise WeightError(f"{self.path}: tensor '{name}' has unsupported dtype {dtype!r:.40}")
            np_dtype = np.dtype(DTYPES[dtype])
            nbytes = math.prod(shape) * np_dtype.itemsize  # Python ints: a huge shape cannot wrap around
            # numpy refuses shapes whose nonzero dims multiply past its index range, even with no bytes
            if math.prod(d for d in shape if d > 0) * np_dtype.itemsize >= 1 << 62 or len(shape) > 64:
                raise WeightError(f"{self.path}: tensor '{name}' has a shape too large for any file")
            if end - begin != nbytes or begin < 0 or min(shape, default=1) < 0:
                raise WeightError(f"{self.path}: tensor '{name}' has {end - begin} bytes, "
                                  f"its shape {shape} and dtype {dtype} need {nbytes}")
            if base + end > size:
                raise WeightError(f"{self.path}: truncated: tensor '{name}' ends at byte {base + end}, "
                                  f"the file has {size}")
            if name.startswith("__pad__."):
                continue  # alignment filler written by write_safetensors
            self.tensors[name] = np.frombuffer(buf[base + begin:base + end], np_dtype).reshape(shape)
            self.dtypes[name] = dtype
        # what was checked above must be what is mapped: the path still names this file, unmodified
        try:
            now = _identity(os.stat(self.path))
        except FileNotFoundError:
            now = None
        if now != self.identity:
            what = "removed" if now is None else "replaced" if now[:2] != self.identity[:2] else "modified"
            raise WeightError(f"{self.path}: {what} while it was being opened (is it being written or copied "
                              f"right now?): open it again when that has finished")

    def check_in_place(self) -> None:
        """Raise if the mapped file was written over in place (size or mtime changed) since it was
        opened: its bytes are then not the ones checked, and reading a page cut off by truncation
        would kill the process with SIGBUS. Replacing the file by a rename is harmless (new inode)."""
        st = os.fstat(self._fd)
        if (st.st_size, st.st_mtime_ns) != self.identity[2:]:
            raise WeightError(f"{self.path}: written over in place since it was loaded ({self.identity[2]} -> "
                              f"{st.st_size} bytes): load the model again; replace model files by renaming "
                              f"(as cactus convert does), never by copying over them")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class TensorInfo:
    """How one logical weight is stored (from the file's `cactus` metadata)."""

    fmt: str
    shape: tuple[int, ...]
    group_size: int = 0


class WeightDir:
    """A converted model directory: config.json (with a `cactus` section) + model.safetensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise WeightError(f"{self.path}: not a model directory")
        cfg_path = self.path / "config.json"
        try:
            with open(cfg_path, "rb") as f:
                cfg_identity = _identity(os.fstat(f.fileno()))
                self.config_dict = json.loads(f.read())
        except FileNotFoundError:
            raise WeightError(f"{cfg_path}: missing (is this a converted cactus model directory?)") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise WeightError(f"{cfg_path}: not valid JSON ({e})") from None
        if not isinstance(self.config_dict, dict):
            raise WeightError(f"{cfg_path}: expected a JSON object, got {type(self.config_dict).__name__}")
        section = self.config_dict.get("cactus")
        if not isinstance(section, dict):
            raise WeightError(f"{cfg_path}: no 'cactus' section: this looks like a HuggingFace checkpoint, "
                              f"convert it first with `cactus convert {self.path} OUT_DIR`")
        if section.get("format_version") != FORMAT_VERSION:
            raise WeightError(f"{cfg_path}: format_version {section.get('format_version')!r}, "
                              f"this cactus reads {FORMAT_VERSION}: convert the model again")
        weights = section.get("weights", WEIGHTS_FILE)
        if not isinstance(weights, str) or Path(weights).name != weights:
            raise WeightError(f"{cfg_path}: cactus.weights must be a file name in {self.path}, got {weights!r:.60}")
        self.file = SafetensorsFile(self.path / weights)
        try:
            cfg_now = _identity(os.stat(cfg_path))
        except FileNotFoundError:
            cfg_now = None
        if cfg_now != cfg_identity:  # the weights mapped may belong to another config
            raise WeightError(f"{self.path}: replaced while it was being opened (a conversion finishing?): "
                              f"open it again")
        self.info = _tensor_infos(self.file)

    def _raw(self, name: str) -> np.ndarray:
        try:
            return self.file.tensors[name]
        except KeyError:
            raise WeightError(f"{self.file.path}: missing tensor '{name}'") from None

    def tensor(self, name: str, shape: tuple[int, ...]) -> QTensor:
        """The weight `name`, checked to have logical shape `shape`, as a QTensor of mmap views."""
        info = self.info.get(name)
        if info is None:
            data = self._raw(name)
            fmt = float_format(self.file.dtypes[name])
            if fmt is None:
                raise WeightError(f"{self.file.path}: tensor '{name}' has dtype {self.file.dtypes[name]}, "
                                  f"expected a float type")
            info = TensorInfo(fmt, tuple(data.shape))
        if tuple(info.shape) != tuple(shape):
            raise WeightError(f"{self.file.path}: tensor '{name}' has shape {list(info.shape)}, "
                              f"the config needs {list(shape)}")
        stored = []  # the data tensor, and its scales
        layout = FORMATS[info.fmt].layout(shape, info.group_size)
        for piece, (want, dtype) in zip(stored_names(name, len(layout)), layout, strict=True):
            have = self._raw(piece)
            if tuple(have.shape) != want or self.file.dtypes[piece] != dtype:
                raise WeightError(f"{self.file.path}: tensor '{piece}' stored as {self.file.dtypes[piece]} "
                                  f"{list(have.shape)}, format {info.fmt} needs {dtype} {list(want)}")
            stored.append(have)
        return QTensor(info.fmt, tuple(shape), stored[0], stored[1] if len(stored) > 1 else None, info.group_size)

    def float_tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A small float weight (norms, conv kernels, router) as f32 (a copy only if not stored f32)."""
        return self.tensor(name, shape).dequantize()


def _tensor_infos(file: SafetensorsFile) -> dict[str, TensorInfo]:
    """The file's `cactus.tensors` metadata ({name: {fmt, shape, group_size}}), every field checked."""
    def bad(why: str) -> WeightError:
        return WeightError(f"{file.path}: malformed 'cactus.tensors' metadata ({why})")

    try:
        raw = json.loads(file.metadata.get("cactus.tensors", "{}"))
    except (ValueError, RecursionError) as e:
        raise bad(f"not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise bad("not an object")
    out = {}
    for name, i in raw.items():
        if not isinstance(i, dict) or not isinstance(i.get("fmt"), str) or not isinstance(i.get("shape"), list):
            raise bad(f"'{name}' needs a fmt string and a shape list")
        shape, group = i["shape"], i.get("group_size", 0)
        if not shape or not all(type(d) is int and 0 < d < 1 << 40 for d in shape) or type(group) is not int:
            raise bad(f"'{name}' has shape {shape!r:.60} and group_size {group!r:.20}: need positive integers")
        fmt = FORMATS.get(i["fmt"])
        if fmt is None:
            raise bad(f"'{name}' has fmt {i['fmt']!r:.20}, not one of {', '.join(FORMATS)}")
        if fmt.grouped and group <= 0:
            raise bad(f"'{name}': format {fmt.name} needs a positive group_size, got {group}")
        out[name] = TensorInfo(fmt.name, tuple(shape), group)
    return out


# ----------------------------------------------------------------------------- writing

@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield an empty directory beside `out_dir`; on success it replaces `out_dir` by a rename, on
    any failure (or Ctrl-C) it is removed: a model directory is never seen half-written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`. An existing `out_dir` is renamed aside first and deleted last: its
    files are unlinked, never truncated or written over, so a process that has them mapped keeps
    reading the old bytes (new inodes for the new files), and a failed rename puts it back."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        tmp.rename(out_dir)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    out_dir.rename(aside / out_dir.name)
    try:
        tmp.rename(out_dir)
    except BaseException:
        (aside / out_dir.name).rename(out_dir)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def cactus_section(quant: str, group_size: int, embed_quant: str, **extra) -> dict:
    """The `cactus` section of a converted model's config.json (docs/FORMAT.md)."""
    return {"format_version": FORMAT_VERSION, "quant": quant, "group_size": group_size,
            "embed_quant": embed_quant, "weights": WEIGHTS_FILE, **extra}


@dataclass
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]  # called once, when this tensor's bytes are written

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(DTYPES[self.dtype]).itemsize


def write_safetensors(path: Path, tensors: Iterable[PlannedTensor], metadata: dict[str, str],
                      progress: Callable[[PlannedTensor], None] | None = None) -> None:
    """Write a standard .safetensors file one tensor at a time, each aligned to ALIGN bytes.

    safetensors wants the data section fully indexed, so alignment gaps are filled by small
    `__pad__.N` U8 tensors (readers skip them); the file stays loadable by any safetensors reader.
    """
    sizes = [(t, t.nbytes) for t in tensors]
    header_len = 4096
    while True:  # the padding depends on where the data starts, i.e. on the header's own length
        entries, plan, off = {}, [], 0
        for t, nbytes in sizes:
            gap = (-(8 + header_len + off)) % ALIGN
            if gap:
                entries[f"__pad__.{len(plan)}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [off, off + gap]}
                plan.append((None, gap))
                off += gap
            entries[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + nbytes]}
            plan.append((t, nbytes))
            off += nbytes
        entries["__metadata__"] = metadata
        raw = json.dumps(entries, separators=(",", ":")).encode()
        if len(raw) <= header_len:
            break
        header_len = padded(len(raw) + 1024, ALIGN)
    raw = raw + b" " * (header_len - len(raw))
    need, where = 8 + header_len + off, path.parent.parent  # path is in a staged_dir beside the target
    free = shutil.disk_usage(path.parent).free
    if need > free:  # fail now, not after writing gigabytes
        raise NoSpaceError(f"not enough disk space in {where}: the weight file needs {need / 1e9:.2f} GB "
                           f"and {free / 1e9:.2f} GB are free")
    try:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for t, nbytes in plan:
                if t is None:
                    f.write(b"\0" * nbytes)
                    continue
                arr = np.ascontiguousarray(t.produce())
                if tuple(arr.shape) != tuple(t.shape) or arr.dtype != np.dtype(DTYPES[t.dtype]):
                    raise WeightError(f"internal: tensor '{t.name}' produced {arr.dtype} {arr.shape}, "
                                      f"planned {t.dtype} {t.shape}")
                f.write(memoryview(arr).cast("B"))
                if progress:
                    progress(t)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise NoSpaceError(f"the disk in {where} filled up while writing the weight file "
                           f"({need / 1e9:.2f} GB)") from e


def plan_weight(name: str, fmt: str, shape: tuple[int, ...], group: int,
                produce_f32: Callable[[], np.ndarray]) -> tuple[list[PlannedTensor], dict]:
    """The planned tensors (data and scales) for one logical weight, quantized lazily once."""
    from .quant import quantize

    layout = FORMATS[fmt].layout(shape, group)
    cache: dict[str, tuple] = {}

    def get(i: int) -> np.ndarray:
        if "q" not in cache:
            cache["q"] = quantize(produce_f32(), fmt, group)
        out = cache["q"][i]
        if i == len(layout) - 1:
            cache.clear()  # last piece written: free the quantized copy
        return out

    return plan_stored(name, fmt, shape, group, [lambda i=i: get(i) for i in range(len(layout))])


def plan_stored(name: str, fmt: str, shape: tuple[int, ...], group: int,
                makers: list[Callable[[], np.ndarray]]) -> tuple[list[PlannedTensor], dict]:
    """The planned tensors of one logical weight in its stored layout, each made by its maker (data,
    then scales), and the weight's `cactus.tensors` entry."""
    f = FORMATS[fmt]
    layout = f.layout(shape, group)
    pieces = [PlannedTensor(piece, dtype, sh, make) for piece, (sh, dtype), make
              in zip(stored_names(name, len(layout)), layout, makers, strict=True)]
    return pieces, {"fmt": fmt, "shape": list(shape), "group_size": group if f.grouped else 0}


def stored_names(name: str, pieces: int) -> tuple[str, ...]:
    """The stored tensors of weight `name`: its data, then (grouped formats) `name.scales`."""
    return (name, name + ".scales")[:pieces]
