"""The ShapesWorld renderer: resolution-independent scenes -> anti-aliased pixels.

A scene lives in continuous image coordinates ([0, 1] x [0, 1], y pointing down). Each shape is
a *signed distance function* (SDF): negative inside, positive outside, in units of the image
side. Rendering at H x W pixels evaluates the SDF at pixel centres and turns distance into
coverage with a one-pixel ramp, ``alpha = clamp(0.5 - sdf / pixel, 0, 1)``; that is analytic
anti-aliasing, so the 16 px render of a scene is (close to) its 32 px render downsampled, the
property a resolution curriculum relies on.

SDF formulas: Inigo Quilez, "2D distance functions" (iquilezles.org/articles/distfunctions2d).

Everything is vectorised over a batch of scenes with torch, so one CPU core renders thousands
of 32 x 32 images per second.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)
SQRT3 = math.sqrt(3.0)


def sdf_circle(dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Circle of radius r. dx (..., 1, W), dy (..., H, 1): offsets from the centre."""
    return torch.sqrt(dx * dx + dy * dy) - r


def sdf_box(dx: torch.Tensor, dy: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Axis-aligned square with half-side ``half`` (exact SDF)."""
    qx, qy = dx.abs() - half, dy.abs() - half
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside


def sdf_square(dx, dy, r):
    # 0.85 r: a square of "radius" r looks as big as a circle of radius r.
    return sdf_box(dx, dy, 0.85 * r)


def sdf_diamond(dx, dy, r):
    """A square rotated by 45 degrees."""
    u, v = (dx + dy) / SQRT2, (dx - dy) / SQRT2
    return sdf_box(u, v, 0.8 * r)


def sdf_triangle(dx, dy, r):
    """Equilateral triangle pointing up, centroid at the centre (Quilez's exact SDF)."""
    r = 0.95 * r
    px, py = dx.abs() - r, -dy + r / SQRT3  # -dy: image y points down, the formula's points up
    fold = (px + SQRT3 * py) > 0
    px, py = (
        torch.where(fold, (px - SQRT3 * py) / 2, px),
        torch.where(fold, (-SQRT3 * px - py) / 2, py),
    )
    px = px - torch.minimum(torch.maximum(px, -2 * r), torch.zeros_like(px))
    return -torch.sqrt(px * px + py * py) * torch.sign(py)


def sdf_cross(dx, dy, arm: float, width: float):
    """A diagonal X (the 'unsafe' hazard sign): two crossed bars of half-length arm."""
    a, b = (dx + dy).abs() / SQRT2, (dx - dy).abs() / SQRT2
    bar1 = torch.maximum(a - width, b - arm)
    bar2 = torch.maximum(b - width, a - arm)
    return torch.minimum(bar1, bar2)


SDF_BY_KIND = (sdf_circle, sdf_square, sdf_triangle, sdf_diamond)  # order of shapes.KINDS


def coverage(sdf: torch.Tensor, pixel: float) -> torch.Tensor:
    """Anti-aliased coverage in [0, 1] from a signed distance (image units)."""
    return (0.5 - sdf / pixel).clamp(0.0, 1.0)


def pixel_grid(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates: x of shape (1, W), y of shape (H, 1), both in (0, 1)."""
    c = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    return c.view(1, -1), c.view(-1, 1)


def gaussian_blur(images: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian (separable, reflect padding).

    images: (B, C, H, W); sigma_px: (B,) standard deviations in pixels (0 = unchanged).
    """
    b, c, h, w = images.shape
    radius = max(1, min(math.ceil(3 * float(sigma_px.max())), h - 1))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype)
    s = sigma_px.clamp(min=1e-3).view(b, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, K)
    k = k.repeat_interleave(c, dim=0)  # one kernel per (image, channel) group
    x = images.reshape(1, b * c, h, w)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(b * c, 1, 1, -1), groups=b * c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(b * c, 1, -1, 1), groups=b * c)
    return x.reshape(b, c, h, w)


def render_arrays(a: dict[str, torch.Tensor], resolution: int) -> torch.Tensor:
    """Render a batch of scenes given as arrays (see ``shapes.SceneBatch.arrays``).

    Keys and shapes (B scenes, S = 3 shape slots):
      centre (B, S, 2), radius (B, S), active (B, S) bool, kind (B,) long,
      fill (B, 3), outline (B, 3), stroke (B,), background (B, 3), unsafe (B,) bool,
      blur (B,) sigma in image units, noise (B, 3, H, W) additive noise or None.
    Returns images in [0, 1], shape (B, 3, H, W).
    """
    b = a["kind"].shape[0]
    px = 1.0 / resolution
    gx, gy = pixel_grid(resolution)

    # One SDF per *active* shape, grouped by kind so each pixel pays for one formula only.
    scene_of, slot = a["active"].nonzero(as_tuple=True)  # (N,), (N,)
    c, r = a["centre"][scene_of, slot], a["radius"][scene_of, slot].view(-1, 1, 1)
    dx = gx.view(1, 1, -1) - c[:, 0].view(-1, 1, 1)  # (N, 1, W)
    dy = gy.view(1, -1, 1) - c[:, 1].view(-1, 1, 1)  # (N, H, 1)
    kind = a["kind"][scene_of]
    shape_sdf = torch.empty(len(scene_of), resolution, resolution)
    for k, fn in enumerate(SDF_BY_KIND):
        m = kind == k
        if m.any():
            # dx (n, 1, W) and dy (n, H, 1) stay un-broadcast: the separable parts of each
            # formula run on vectors, only the rest on full (n, H, W) grids.
            shape_sdf[m] = fn(dx[m], dy[m], r[m])
    # The union of a scene's shapes is the minimum of their SDFs.
    sdf = torch.full((b, resolution, resolution), float("inf"))
    for j in range(int(slot.max()) + 1 if len(slot) else 0):
        m = slot == j
        rows = scene_of[m]
        sdf[rows] = torch.minimum(sdf[rows], shape_sdf[m])
    sdf = sdf.unsqueeze(1)  # (B, 1, H, W)

    stroke = a["stroke"].view(b, 1, 1, 1)
    fill, outline = a["fill"].view(b, 3, 1, 1), a["outline"].view(b, 3, 1, 1)
    a_out = coverage(sdf, px)  # the whole shape, outline included
    a_in = coverage(sdf + stroke, px)  # the fill, shrunk by the stroke (0 for plain style)
    # Over-compositing, written as two fused multiply-adds on the (B, 3, H, W) image:
    # img = bg + a_out * (outline - bg) + a_in * (fill - outline)
    bg = a["background"].reshape(b, 3, 1, 1)
    img = torch.addcmul(bg.expand(b, 3, resolution, resolution), a_out, outline - bg)
    img.addcmul_(a_in, fill - outline)

    if a["unsafe"].any():  # the hazard sign sits in the top-right corner, drawn last
        m = a["unsafe"]
        sx, sy = gx - 0.84, gy - 0.16
        a_x = coverage(sdf_cross(sx, sy, arm=0.11, width=0.035), px)
        hazard = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
        img[m] = img[m] * (1 - a_x) + hazard * a_x

    blurred = a["blur"] > 0
    if blurred.any():
        img[blurred] = gaussian_blur(img[blurred], a["blur"][blurred] * resolution)
    if a.get("noise") is not None:
        img.add_(a["noise"])
    return img.clamp_(0.0, 1.0)
