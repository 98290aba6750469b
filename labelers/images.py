"""Safe image decoding: one place that turns bytes or a path into an RGB PIL image, or a clear error."""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Refuse decompression bombs before decoding: 64 megapixels is far above any labeling use.
MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file and the reason."""


def load_image(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Return the image at `source` (a path or raw bytes) fully decoded as RGB.

    Raises ImageLoadError naming `name` (or the path) when the file is missing, truncated,
    not an image, or larger than `max_pixels`.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageLoadError(f"{label}: cannot open ({exc.strerror or exc})") from None
    with handle:
        try:
            image = Image.open(handle)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageLoadError(f"{label}: {width}x{height} exceeds the {max_pixels}-pixel limit")
            image.load()  # force full decode so truncation is caught here, not in a worker
            return image.convert("RGB")
        except ImageLoadError:
            raise
        except UnidentifiedImageError:
            raise ImageLoadError(f"{label}: not a readable image (no image format Pillow knows)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"{label}: not a readable image ({exc})") from None
