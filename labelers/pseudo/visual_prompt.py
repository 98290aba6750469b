"""CoT-PL's visual prompt for one mask: black canvas, blurred grey context inside the box, the mask in
boosted colour, a box outline. What the VLM is shown instead of the raw image."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from labelers.pseudo.proposals import mask_box
from labelers.pseudo.settings import VisualPromptSettings


def _boost(image: Image.Image, saturation: float, value: float) -> np.ndarray:
    """Return the RGB array of ``image`` with HSV saturation and value multiplied (clipped to 255)."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * value, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB"))


def render_visual_prompt(image: Image.Image, mask: np.ndarray,
                         settings: VisualPromptSettings | None = None) -> Image.Image:
    """Return the RGB prompt image for ``mask`` (bool, same size as ``image``).

    Outside the mask's box: black. Inside the box: the greyscale crop blurred with a
    ``blur_kernel``-wide Gaussian. Inside the mask: the original colours, saturation and value
    boosted. Then the box outline. Raises ValueError when the mask is empty or its shape differs.
    """
    s = settings or VisualPromptSettings()
    rgb = image.convert("RGB")
    if mask.shape != (rgb.height, rgb.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({rgb.height}, {rgb.width})")
    if not mask.any():
        raise ValueError("cannot render a visual prompt for an empty mask")
    x0, y0, x1, y1 = mask_box(mask)
    # PIL's GaussianBlur takes a radius; OpenCV-style (k x k) kernels use sigma = 0.3((k-1)/2 - 1) + 0.8.
    sigma = 0.3 * ((s.blur_kernel - 1) / 2 - 1) + 0.8
    grey = rgb.crop((x0, y0, x1, y1)).convert("L").filter(ImageFilter.GaussianBlur(sigma)).convert("RGB")
    canvas = np.zeros((rgb.height, rgb.width, 3), dtype=np.uint8)
    canvas[y0:y1, x0:x1] = np.asarray(grey)
    canvas[mask] = _boost(rgb, s.saturation, s.value)[mask]
    out = Image.fromarray(canvas)
    if s.box_width > 0:
        ImageDraw.Draw(out).rectangle((x0, y0, x1 - 1, y1 - 1), outline=tuple(s.box_colour), width=s.box_width)
    return out
