"""Foreign tensor files: safetensors (read and written here, no torch needed) and PyTorch state dicts.

Both are untrusted input. A safetensors file is parsed field by field (header size, JSON header, dtypes,
shapes, byte ranges that must tile the data without overlap) and nothing in it is executed. A PyTorch
file is read with ``torch.load(..., weights_only=True)``, PyTorch's restricted unpickler that builds
tensors and plain containers only, never arbitrary objects. Every problem is one line naming the file.

Tensors come back as NumPy arrays (bfloat16 as ``ml_dtypes.bfloat16``, the dtype JAX uses), by name.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import ml_dtypes
import numpy as np

from zoo.errors import CheckpointError

__all__ = ["FORMATS", "format_of", "read", "read_safetensors", "read_torch", "write", "write_safetensors",
           "write_torch"]

FORMATS = ("safetensors", "pytorch")

# safetensors dtype codes (the format's spec) <-> NumPy dtypes, little-endian.
_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_CODES = {dt.newbyteorder("=") if dt.byteorder in "<>" else dt: code for code, dt in _DTYPES.items()}
_MAX_HEADER = 100 * 2 ** 20       # the reference implementation's limit


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
  """'safetensors' or 'pytorch': ``fmt`` when given, else from the file's suffix."""
  if fmt:
    if fmt not in FORMATS:
      raise CheckpointError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    return fmt
  suffix = Path(path).suffix.lower()
  if suffix == ".safetensors":
    return "safetensors"
  if suffix in (".pt", ".pth", ".bin", ".ckpt"):
    return "pytorch"
  raise CheckpointError(f"{path}: cannot tell the format from the suffix {suffix!r}; "
                        f"say it (one of {', '.join(FORMATS)})")


def read(path: str | os.PathLike, fmt: str | None = None, key: str | None = None, *,
         nested: Sequence[str] = (), inert: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors by name, string metadata) from a safetensors or PyTorch file.

  ``nested``, ``inert``: see :class:`zoo.interop.layout.Layout` (PyTorch training checkpoints).
  """
  fmt = format_of(path, fmt)
  if fmt == "safetensors":
    if key:
      raise CheckpointError("--key selects a part of a PyTorch checkpoint; a safetensors file is flat")
    return read_safetensors(path)
  return read_torch(path, key, nested=nested, inert=inert), {}


def write(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], fmt: str | None = None,
          metadata: Mapping[str, str] | None = None, *, nested: Sequence[str] = ()) -> Path:
  fmt = format_of(path, fmt)
  if fmt == "safetensors":
    return write_safetensors(path, tensors, metadata)
  return write_torch(path, tensors, nested=nested)


# -- safetensors


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Parses a safetensors file: 8-byte little-endian header size, a JSON header, the tensor bytes."""
  path = Path(path)
  try:
    data = path.read_bytes()
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None

  def bad(why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a valid safetensors file: {why}")

  if len(data) < 8:
    raise bad("shorter than the 8-byte header size")
  n = int.from_bytes(data[:8], "little")
  if n > min(len(data) - 8, _MAX_HEADER):
    raise bad(f"the header size {n} exceeds the file ({len(data)} bytes) or the format's limit")
  try:
    header = json.loads(data[8:8 + n].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(f"the header is not JSON ({e})") from None
  if not isinstance(header, dict):
    raise bad("the header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in metadata.items()):
    raise bad("__metadata__ must map strings to strings")
  buffer = memoryview(data)[8 + n:]
  tensors, spans = {}, []
  for name, info in header.items():
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
      raise bad(f"tensor {name!r}: the entry needs exactly dtype, shape and data_offsets")
    dtype = _DTYPES.get(info["dtype"])
    if dtype is None:
      raise bad(f"tensor {name!r}: unknown dtype {info['dtype']!r} (known: {', '.join(_DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
      raise bad(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= len(buffer)):
      raise bad(f"tensor {name!r}: data_offsets {offsets!r} fall outside the {len(buffer)} data bytes")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
      raise bad(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {info['dtype']}")
    spans.append((begin, end, name))
    tensors[name] = np.frombuffer(buffer[begin:end], dtype=dtype).reshape(tuple(shape)).astype(
        dtype.newbyteorder("="), copy=True)
  spans.sort()
  for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
    if begin < end:
      raise bad(f"tensors {a!r} and {b!r} overlap")
  return tensors, dict(metadata)


def _atomic_write(path: Path, write_fn) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      write_fn(f)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> Path:
  """Writes ``tensors`` (sorted by name, header padded to 8 bytes) atomically; returns the path."""
  header, blobs, offset = {}, [], 0
  for name in sorted(tensors):
    a = np.asarray(tensors[name], order="C")
    code = _CODES.get(a.dtype.newbyteorder("=") if a.dtype.byteorder in "<>" else a.dtype)
    if code is None:
      raise CheckpointError(f"tensor {name!r}: dtype {a.dtype} has no safetensors code")
    blob = a.astype(_DTYPES[code], copy=False).tobytes()
    header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
  raw += b" " * (-len(raw) % 8)

  def write_fn(f):
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for blob in blobs:
      f.write(blob)
  return _atomic_write(Path(path), write_fn)


# -- PyTorch


def _torch():
  try:
    import torch
  except ImportError:
    raise CheckpointError("PyTorch files need torch: pip install -e '.[torch]' (or convert the file to "
                          "safetensors, which the zoo reads without torch)") from None
  return torch


def _is_state_dict(obj: Any, torch) -> bool:
  return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


class _Inert:
  """A foreign object in a checkpoint (a pickled config), kept as the plain fields the restricted
  unpickler built; nothing of its class is imported or run."""

  def __setstate__(self, state):
    self.fields = state


def read_torch(path: str | os.PathLike, key: str | None = None, *, nested: Sequence[str] = (),
               inert: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """A PyTorch state dict as NumPy arrays, read with ``torch.load(weights_only=True)``.

  ``key`` picks a nested state dict of a training checkpoint (e.g. ``netG``; dots go deeper). Without
  it, the file must be a state dict, or hold exactly one, or (``nested``) hold state dicts under those
  keys, whose tensors come back as ``<key>.<name>``. ``inert``: class names read as inert records.
  """
  torch = _torch()
  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: no such file")
  try:
    with torch.serialization.safe_globals([(_Inert, name) for name in inert]):
      obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise CheckpointError(f"{path}: not a PyTorch weights file that loads safely ({first[:200]})") from None
  where = "the file"
  if key:
    for part in key.split("."):
      if not isinstance(obj, Mapping) or part not in obj:
        known = ", ".join(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: {where} has no key {part!r} (it has: {known})")
      obj, where = obj[part], f"{where}[{part!r}]"
  elif nested:
    present = [k for k in nested if k in obj] if isinstance(obj, Mapping) else []
    if not present or not all(_is_state_dict(obj[k], torch) for k in present):
      has = (f"a bare state dict of {len(obj)} tensors" if _is_state_dict(obj, torch) else
             f"the keys {', '.join(map(str, obj))}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}")
      raise CheckpointError(f"{path}: expected state dicts under {', '.join(nested)}; the file has {has} "
                            f"(save a bare one as {{'{nested[-1]}': state_dict}})")
    return {f"{k}.{name}": _to_numpy(t, torch) for k in present for name, t in obj[k].items()}
  if not _is_state_dict(obj, torch):
    inner = [k for k, v in obj.items() if _is_state_dict(v, torch)] if isinstance(obj, Mapping) else []
    if len(inner) == 1 and not key:
      obj = obj[inner[0]]
    elif inner:
      raise CheckpointError(f"{path}: {where} holds several state dicts ({', '.join(map(str, inner))}); "
                            f"pick one with --key")
    else:
      raise CheckpointError(f"{path}: {where} is not a state dict of tensors")
  return {str(name): _to_numpy(t, torch) for name, t in obj.items()}


def _to_numpy(t, torch) -> np.ndarray:
  t = t.detach().cpu().contiguous()
  return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy().copy()


def write_torch(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], *,
                nested: Sequence[str] = ()) -> Path:
  """Writes a PyTorch state dict (``torch.save`` of a dict of tensors) atomically; with ``nested``,
  the tensors named ``<key>.<name>`` go to a state dict under ``key`` (a training checkpoint)."""
  torch = _torch()
  state: dict[str, Any] = {}
  for name, a in tensors.items():
    a = np.asarray(a, order="C")
    t = (torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
         if a.dtype == ml_dtypes.bfloat16 else torch.from_numpy(a.copy()))
    head, _, rest = name.partition(".")
    if head in nested and rest:
      state.setdefault(head, {})[rest] = t
    else:
      state[name] = t
  return _atomic_write(Path(path), lambda f: torch.save(state, f))
