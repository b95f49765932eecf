"""Sample grids as PNG files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles (N, H, W, C) images in [0, 1] into one uint8 image (rows*(H+pad)+pad, ..., C)."""
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  if images.ndim != 4:
    raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
  n, h, w, c = images.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  out = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32) * 0.5
  for i in range(n):
    r, col = divmod(i, ncols)
    out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return np.round(out * 255).astype(np.uint8)


def save_png(images: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 2) -> Path:
  """Writes a grid of (N, H, W, C) images in [0, 1] to ``path`` (upscaled ``scale`` times)."""
  g = grid(images, ncols)
  mode = "L" if g.shape[-1] == 1 else "RGB"
  img = Image.fromarray(g[..., 0] if mode == "L" else g[..., :3], mode=mode)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path)
  return path
