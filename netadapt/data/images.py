"""Image decoding and conversion: one file or array to a normalised float32 tensor.

Shared by the in-memory loaders (`netadapt.data`) and the streamed folder
data (`netadapt.data.stream`), so both give the same tensor for the same
file, to the bit. PGM/PPM (binary, 8-bit) and `.npy` decode without extra
dependencies; PNG/JPEG/BMP/... need Pillow, the optional `images` extra
(`pip install 'netadapt[images]'`): the default data never decodes image
files, so it is not worth a hard dependency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netadapt.errors import DataError, quote

__all__ = ["IMAGE_EXTENSIONS", "convert", "decode", "read_image", "read_netpbm", "to_tensor"]

NATIVE_EXTENSIONS = {".pgm", ".ppm", ".npy"}
PILLOW_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGE_EXTENSIONS = NATIVE_EXTENSIONS | PILLOW_EXTENSIONS  # what a folder data set reads
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
CHUNK = 4096  # images converted per step, bounds the float32 peak memory


def decode(path: str | Path, channels: int, resolution: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """One image file as float32 `[channels, resolution, resolution]`, exactly as `to_tensor` converts it."""
    return to_tensor([read_image(Path(path))], channels, resolution, mean, std)[0]


def read_image(path: Path) -> np.ndarray:
    """Decode one image to uint8 `[C, H, W]` (C = 1 or 3), or float32 for float .npy files."""
    suffix = path.suffix.lower()
    if suffix in (".pgm", ".ppm"):
        array = read_netpbm(path)
    elif suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not a readable .npy array ({error})") from None
        if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise DataError(f"{path}: .npy images must be uint8 (0-255) or float (0-1), got {array.dtype}")
    else:
        try:
            from PIL import Image
        except ImportError:
            raise DataError(
                f"{path}: {suffix} images need Pillow: pip install 'netadapt[images]' (or use PGM/PPM or .npy files, "
                "which need nothing)"
            ) from None
        try:
            with Image.open(path) as image:
                image = image.convert("L" if image.mode in ("1", "L", "I;16", "I", "F") else "RGB")
                array = np.asarray(image)
        except OSError as error:
            raise DataError(f"{path}: cannot decode image ({error})") from None
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3) and array.shape[0] not in (1, 3):
        array = np.moveaxis(array, -1, 0)  # HWC -> CHW
    if array.ndim != 3 or array.shape[0] not in (1, 3) or min(array.shape[1:]) < 1:
        raise DataError(f"{path}: expected an HxW, HxWxC or CxHxW image with 1 or 3 channels, got shape {array.shape}")
    return array


def read_netpbm(path: Path) -> np.ndarray:
    """Binary PGM (P5) or PPM (P6) with maxval <= 255."""
    data = path.read_bytes()
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' starts a comment
        while position < len(data) and data[position : position + 1].isspace():
            position += 1
        if data[position : position + 1] == b"#":
            position = data.find(b"\n", position) + 1 or len(data)
            continue
        start = position
        while position < len(data) and not data[position : position + 1].isspace():
            position += 1
        if start == position:
            raise DataError(f"{path}: truncated PGM/PPM header")
        fields.append(data[start:position])
    position += 1  # exactly one whitespace byte before the pixels
    magic = fields[0]
    if magic not in (b"P5", b"P6"):
        raise DataError(f"{path}: unsupported PGM/PPM magic {quote(magic)}; only binary P5 (gray) and P6 (RGB) are read")
    try:
        width, height, maxval = (int(field) for field in fields[1:])
    except ValueError:
        raise DataError(f"{path}: malformed PGM/PPM header {quote(fields)}") from None
    if not 0 < maxval < 256:
        raise DataError(f"{path}: only 8-bit PGM/PPM (maxval <= 255) is supported, got maxval {maxval}")
    channels = 1 if magic == b"P5" else 3
    size = width * height * channels
    pixels = np.frombuffer(data, dtype=np.uint8, count=min(size, max(len(data) - position, 0)), offset=position)
    if pixels.size != size:
        raise DataError(f"{path}: truncated: {width}x{height}x{channels} needs {size} pixel bytes, found {pixels.size}")
    image = pixels.reshape(height, width, channels).transpose(2, 0, 1)
    if maxval != 255:
        image = (image.astype(np.float32) * (255.0 / maxval)).round().astype(np.uint8)
    return image


def to_tensor(
    images: np.ndarray | list[np.ndarray],
    channels: int,
    resolution: int,
    mean: list[float],
    std: list[float],
) -> torch.Tensor:
    """uint8 `[N, H, W]` / `[N, C, H, W]` (or a list of `[C, H, W]`) -> normalised float32 `[N, C, r, r]`."""
    out = torch.empty((len(images), channels, resolution, resolution), dtype=torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    if isinstance(images, list):
        # Image folders may mix sizes and channel counts: convert one at a time.
        for i, image in enumerate(images):
            out[i : i + 1] = convert(image[None], channels, resolution, mean_t, std_t)
        return out
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK]
        out[start : start + len(chunk)] = convert(chunk, channels, resolution, mean_t, std_t)
    return out


def convert(
    chunk: np.ndarray, channels: int, resolution: int, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    x = torch.from_numpy(np.array(chunk))  # a writable copy: idx arrays are read-only views
    if x.dim() == 3:
        x = x.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1 and channels == 3:
        x = x.expand(-1, 3, -1, -1)  # gray -> RGB by repeating the channel
    elif x.shape[1] == 3 and channels == 1:
        weights = torch.tensor(LUMINANCE, dtype=torch.float32).view(1, 3, 1, 1)
        x = (x * weights).sum(dim=1, keepdim=True)
    height, width = x.shape[-2:]
    if (height, width) != (resolution, resolution):
        # Antialias only when shrinking: it low-pass filters to avoid aliasing,
        # and upsampling has nothing to alias.
        shrink = resolution < height or resolution < width
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=shrink)
    return (x - mean) / std
