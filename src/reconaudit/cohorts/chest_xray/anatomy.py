"""The chest X-ray renderer: soft-edged analytic anatomy and findings, batched over studies.

:class:`RenderDraw` holds the drawn parameters of one study's image; :func:`stack_draws` batches them
into the tensors :func:`render` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from reconaudit.cohorts.chest_xray.params import (
    _ATT_SCALE,
    _HEART_TILT,
)

_F32 = torch.float32


def _sig(d: torch.Tensor, e: float | torch.Tensor) -> torch.Tensor:
    """Soft inside indicator ``sigma(d / e)`` of a signed distance ``d`` (positive inside)."""
    return torch.sigmoid(d / e)


def _smoothstep(a: float, b: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - a) / (b - a)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _lung_geometry(
    xs: torch.Tensor, y: torch.Tensor, p: dict[str, torch.Tensor], e: float, margin: float = 0.0
):
    """Soft lung mask and lateral coordinate ``u`` for one hemithorax (``xs``: distance from midline).

    Borders: medial ``xs = m``; lateral chest wall ``xs = Lw (1 - 0.25 ((y - 0.15) / 0.9)^2)``; apex
    ``y = y_apex + 0.9 (u - 0.35)^2``; hemidiaphragm ``y = y_dia + 0.1 u^2 - dome sin(pi u)``.
    ``margin`` shrinks the mask by that distance on every side.
    """
    m = p["mediastinum"] + 0.05 * _smoothstep(-0.55, 0.1, y)
    lw = p["thorax_half"]
    lat = lw * (1.0 - 0.25 * ((y - 0.15) / 0.9) ** 2)
    u = ((xs - m) / (lat - m)).clamp(-0.2, 1.2)
    uc = u.clamp(0.0, 1.0)
    y_top = p["apex"] + 0.9 * (u - 0.35) ** 2
    y_bot = p["diaphragm"] + 0.1 * uc**2 - p["dome"] * torch.sin(math.pi * uc)
    mask = (
        _sig(xs - m - margin, e)
        * _sig(lat - xs - margin, e)
        * _sig(y - y_top - margin, e)
        * _sig(y_bot - y - margin, e)
    )
    return mask, u


def _gaussian_blur_fft(img: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image with its own Gaussian, ``H(f) = exp(-2 pi^2 sigma^2 |f|^2)``, reflect-padded."""
    b, _, h, w = img.shape
    # a padding that depends on the size only, so a study's pixels never depend on its batch
    pad = min(int(math.ceil(20.0 * h / 64.0)), h - 1, w - 1)
    x = F.pad(img, (pad, pad, pad, pad), mode="reflect") if pad > 0 else img
    hh, ww = x.shape[-2:]
    fy = torch.fft.fftfreq(hh, dtype=_F32).view(1, 1, hh, 1)
    fx = torch.fft.rfftfreq(ww, dtype=_F32).view(1, 1, 1, ww // 2 + 1)
    s2 = (sigma_px.to(_F32) ** 2).view(b, 1, 1, 1)
    tf = torch.exp(-2.0 * math.pi**2 * s2 * (fx**2 + fy**2))
    out = torch.fft.irfft2(torch.fft.rfft2(x) * tf, s=(hh, ww))
    return out[..., pad : pad + h, pad : pad + w]


def render(p: dict[str, torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a batch of studies from their parameter tensors; returns (images, body masks, finding regions).

    The finding region of a study is the union of where its present findings are drawn: each
    nodule's disc of radius ``2 sigma`` of its Gaussian, and the pixels where the effusion,
    consolidation (over the lung) or pneumothorax gap reach half their full opacity.
    Cardiomegaly changes the heart's size rather than adding an opacity, so it has no region.

    Every entry of ``p`` is a tensor with the batch as first dimension (shape (B,) or (B, 2) per
    hemithorax, side 0 = image left = patient's right), or a low-resolution noise field.
    """
    b = p["scale"].shape[0]
    lin = (torch.arange(size, dtype=_F32) + 0.5) / size * 2.0 - 1.0
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")

    def col(name: str) -> torch.Tensor:  # (B,) -> (B,1,1,1)
        return p[name].to(_F32).view(b, 1, 1, 1)

    def side(name: str) -> torch.Tensor:  # (B,2) -> (B,2,1,1)
        return p[name].to(_F32).view(b, 2, 1, 1)

    # per-study pose: canonical coordinates of every pixel
    s, th = col("scale"), col("rotation")
    dx, dy = xx.view(1, 1, size, size) - col("shift_x"), yy.view(1, 1, size, size) - col("shift_y")
    cos, sin = torch.cos(th), torch.sin(th)
    x = (dx * cos + dy * sin) / s
    y = (-dx * sin + dy * cos) / s
    e = 0.7 * (2.0 / size)  # edge width in canonical units (about one pixel)
    e_px = 2.0 / size

    # ------------------------------------------------------------------ body and soft tissue
    half = 0.26 + 0.68 * _smoothstep(-0.98, -0.62, y)
    body = _sig(half - x.abs(), e) * _sig(y + 1.05, e)
    tissue = body * (0.22 + 0.23 * torch.sqrt((1.0 - (x / half) ** 2).clamp(min=0.0)))

    # ------------------------------------------------------------------ hemithoraces (B,2,H,W)
    sign = torch.tensor([-1.0, 1.0], dtype=_F32).view(1, 2, 1, 1)
    xs = x * sign  # distance from midline towards each side
    ps = {
        "mediastinum": side("mediastinum"),
        "thorax_half": col("thorax_half"),
        "apex": col("apex"),
        "diaphragm": side("diaphragm"),
        "dome": side("dome"),
    }
    lung, u = _lung_geometry(xs, y, ps, e)
    depth = (
        0.34
        * (0.78 + 0.22 * torch.sin(math.pi * u.clamp(0.0, 1.0)))
        * (0.85 + 0.15 * _smoothstep(-0.75, -0.2, y))
    )

    # heart, aortic knob (occlude the lungs)
    a_h, b_h = col("heart_a"), col("heart_b")
    xh, yh = col("heart_x"), col("heart_y")
    ct, st_ = math.cos(_HEART_TILT), math.sin(_HEART_TILT)
    hx_, hy_ = (x - xh) * ct + (y - yh) * st_, -(x - xh) * st_ + (y - yh) * ct
    rh = torch.sqrt((hx_ / a_h) ** 2 + (hy_ / b_h) ** 2)
    heart = _sig((1.0 - rh) * torch.minimum(a_h, b_h), e)
    ra = col("aorta_r")
    rk = torch.sqrt((x - 0.1 - 0.6 * ra) ** 2 + ((y + 0.33) / 0.8) ** 2)
    aorta = _sig(ra - rk, e)
    occl = (1.0 - heart) * (1.0 - aorta)

    # effusion: fluid below y_f(u) = y_cp - h (1 + 0.8 u^2), soft with the amount of fluid
    h_eff = side("effusion_h")
    uc = u.clamp(0.0, 1.0)
    y_f = ps["diaphragm"] + 0.08 - h_eff * (1.0 + 0.8 * uc**2)
    effusion = side("effusion_on") * side("effusion_op") * _sig(y - y_f, e + 0.12 * h_eff)

    # consolidation: thresholded smooth noise inside an elliptic envelope, one hemithorax
    noise_c = F.interpolate(
        p["consolidation_noise"].to(_F32), size=(size, size), mode="bicubic", align_corners=False
    )
    rc = torch.sqrt(
        ((xs - side("cons_x")) / side("cons_rx")) ** 2 + ((y - side("cons_y")) / side("cons_ry")) ** 2
    )
    envelope = _sig((1.0 - rc) * 0.25, 0.03)
    consolidation = side("cons_on") * side("cons_op") * envelope * torch.sigmoid((noise_c + 0.25) / 0.18)

    # pneumothorax: lung collapsed towards its medial base by fraction w
    w = side("ptx_w")
    ptx_on = side("ptx_on")
    cx = ps["mediastinum"] + 0.05
    cy = ps["diaphragm"] - 0.05
    xs_c = cx + (xs - cx) / (1.0 - w)
    y_c = cy + (y - cy) / (1.0 - w)
    lung_c, _ = _lung_geometry(xs_c, y_c, ps, e * 0.8)
    lung_inner, _ = _lung_geometry(xs, y, ps, e, margin=3.0 * e)
    gap = ptx_on * lung * (1.0 - lung_c)
    pleural = ptx_on * 4.0 * lung_c * (1.0 - lung_c) * lung_inner * side("ptx_line")

    # vascular markings radiating from the hila: (1/2 + 1/2 cos(n theta + phase))^6 exp(-r / 0.45)
    noise_m = F.interpolate(
        p["marking_noise"].to(_F32), size=(size, size), mode="bicubic", align_corners=False
    )
    hx, hy = xs - (ps["mediastinum"] + 0.1), y + 0.12
    r_hil = torch.sqrt(hx**2 + hy**2)
    theta = torch.atan2(hy, hx)
    stripes = (0.5 + 0.5 * torch.cos(13.0 * theta + side("marking_phase") + 2.5 * noise_m)) ** 6
    markings = 0.08 * stripes * torch.exp(-r_hil / 0.45) + 0.06 * torch.exp(-((r_hil / 0.12) ** 2))
    aerated = lung * (1.0 - effusion) * (1.0 - consolidation)
    markings = markings * aerated * (1.0 - gap) * col("marking_amp")

    reduction = depth * aerated + 0.06 * gap
    reduction = (reduction.sum(1, keepdim=True) - markings.sum(1, keepdim=True)) * occl
    pleural = pleural.sum(1, keepdim=True) * 0.11

    # ------------------------------------------------------------------ bones (scaled by density)
    dens = col("bone_density")
    xa = x.abs()
    vert = 0.65 + 0.35 * torch.cos(2.0 * math.pi * (y - col("spine_phase")) / 0.13) ** 2
    spine = 0.13 * _sig(0.085 - xa, e) * vert * _sig(y + 0.95, e)
    sp = col("rib_spacing")
    ur = (y - col("rib_y0") - col("rib_curv") * (xs - 0.12).clamp(min=0.0) ** 1.6) / sp
    tr = torch.remainder(ur, 1.0) - 0.5
    rib_band = _sig(0.2 - tr.abs(), e / sp)
    rib_extent = (
        _sig(ur, 0.05) * _sig(9.0 - ur, 0.05) * _sig(xs - 0.06, e) * _sig(ps["thorax_half"] + 0.07 - xs, e)
    )
    # ribs read fainter where they overlie mediastinum and abdomen than over aerated lung
    ribs = (rib_band * rib_extent * (0.45 + 0.55 * lung)).sum(1, keepdim=True)
    ua = (y - col("rib_y0") - 0.12 + 0.35 * (xs - 0.1)) / (1.1 * sp)
    ta = torch.remainder(ua, 1.0) - 0.5
    ant = _sig(0.15 - ta.abs(), e / sp) * _sig(ua, 0.05) * _sig(6.0 - ua, 0.05)
    ant = (ant * _sig(xs - 0.1, e) * _sig(ps["thorax_half"] - 0.05 - xs, e) * _sig(0.75 - xs, 0.05)).sum(
        1, keepdim=True
    )
    # clavicles: segment from (0.07, -0.74) to (0.62, -0.86) on each side
    ax, ay, bx, by = 0.07, -0.74, 0.62, -0.86
    t = (((xs - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)).clamp(0.0, 1.0)
    dcl = torch.sqrt((xs - ax - t * (bx - ax)) ** 2 + (y - ay - t * (by - ay)) ** 2)
    clav = _sig(0.035 - dcl, e).sum(1, keepdim=True)
    bones = dens * (spine + 0.085 * ribs + 0.04 * ant + 0.12 * clav) * body

    # ------------------------------------------------------------------ other soft tissue
    trachea = 0.09 * _sig(0.035 - (x - 0.01).abs(), e) * _sig(-0.3 - y, 0.03) * _sig(y + 1.0, e)
    bc_y = ps["diaphragm"] - 0.08
    rb = torch.sqrt(((xs - 0.46) / 0.36) ** 2 + ((y - bc_y) / 0.3) ** 2)
    breast = col("breast") * 0.075 * (1.0 - rb**2).clamp(min=0.0) * _sig(y - bc_y + 0.12, 0.06)
    breast = (breast * _sig(0.05 + 1.0 - rb, e)).sum(1, keepdim=True)

    # nodules: Gaussian of sigma = max(r / 1.5, 0.6 px) carrying the mass of a sphere of radius r
    nod = torch.zeros_like(x)
    nod_region = torch.zeros_like(x, dtype=torch.bool)
    for k in range(p["nodule_x"].shape[1]):
        r = p["nodule_r"][:, k].to(_F32).view(b, 1, 1, 1)
        sg = torch.clamp(r / 1.5, min=0.6 * e_px / s)
        amp = p["nodule_amp"][:, k].to(_F32).view(b, 1, 1, 1) * (r / 1.5) ** 2 / sg**2
        d2 = (x - p["nodule_x"][:, k].to(_F32).view(b, 1, 1, 1)) ** 2 + (
            y - p["nodule_y"][:, k].to(_F32).view(b, 1, 1, 1)
        ) ** 2
        nod = nod + amp * torch.exp(-d2 / (2.0 * sg**2))
        nod_region |= (amp > 0) & (d2 <= (2.0 * sg) ** 2)

    att = tissue - reduction + bones + 0.06 * heart * body + breast + nod + pleural - trachea * body
    att = att.clamp(min=0.0) / _ATT_SCALE

    # ------------------------------------------------------------------ display and detector
    img = (col("gain") * att + col("offset")).clamp(0.0, 1.0) ** col("gamma")
    mean = img.mean(dim=(2, 3), keepdim=True)
    img = mean + col("contrast") * (img - mean)
    img = _gaussian_blur_fft(img, p["blur"].to(_F32) * size / 64.0)
    # effusion and consolidation are visible only over the lung; half of each one's full opacity
    full_eff = side("effusion_on") * side("effusion_op")
    full_cons = side("cons_on") * side("cons_op")
    opaque = ((effusion * lung > 0.5 * full_eff) & (full_eff > 0)) | ((consolidation * lung > 0.5 * full_cons) & (full_cons > 0))
    finding = nod_region | opaque.any(1, keepdim=True) | (gap.amax(1, keepdim=True) > 0.5)
    return img.clamp(0.0, 1.0).contiguous(), (body > 0.5), (finding & (body > 0.5)).contiguous()


# ============================================================================ parameter draws


Pair = np.ndarray
"""A float array of shape (2,): one value per lung (patient's right, left)."""


@dataclass(frozen=True)
class RenderDraw:
    """The drawn rendering parameters of one study (canonical coordinates, see the package docstring).

    Scalars are floats; per-lung values are arrays of shape (2,) (index 0: the patient's right);
    ``consolidation_noise`` is the (10, 10) smooth noise of the consolidation texture.  The field
    names are the keys of the batch :func:`render` reads (:func:`stack_draws`).
    """

    scale: float
    rotation: float
    shift_x: float
    shift_y: float
    thorax_half: float
    apex: Pair
    mediastinum: Pair
    dome: Pair
    diaphragm: Pair
    heart_a: float
    heart_b: float
    heart_x: float
    heart_y: float
    aorta_r: float
    bone_density: float
    breast: float
    rib_spacing: float
    rib_y0: float
    rib_curv: float
    spine_phase: float
    marking_phase: Pair
    marking_amp: float
    marking_noise: np.ndarray
    effusion_on: Pair
    effusion_h: Pair
    effusion_op: Pair
    cons_on: Pair
    cons_x: Pair
    cons_y: Pair
    cons_rx: Pair
    cons_ry: Pair
    cons_op: Pair
    consolidation_noise: np.ndarray
    ptx_on: Pair
    ptx_w: Pair
    ptx_line: Pair
    nodule_x: Pair
    nodule_y: Pair
    nodule_r: Pair
    nodule_amp: Pair
    gain: float
    offset: float
    gamma: float
    contrast: float
    blur: float


def stack_draws(draws: list[RenderDraw]) -> dict[str, np.ndarray]:
    """The draws as float32 columns keyed by field name (leading axis: the study), 640 bytes a study.

    The cohort keeps its draws in this form (a list of :class:`RenderDraw` costs ~5 KB a study);
    :func:`draw_batch` turns a slice of the columns into :func:`render`'s input.
    """
    return {f.name: np.stack([np.asarray(getattr(d, f.name), dtype=np.float64) for d in draws]).astype(np.float32)
            for f in fields(RenderDraw)}


def draw_batch(columns: dict[str, np.ndarray], sl: slice) -> dict[str, torch.Tensor]:
    """The studies ``sl`` of the draw columns (:func:`stack_draws`) as :func:`render`'s batch of tensors;
    ``consolidation_noise`` gets a channel axis, (B, 1, 10, 10)."""
    out = {name: torch.from_numpy(np.ascontiguousarray(col[sl])) for name, col in columns.items()}
    out["consolidation_noise"] = out["consolidation_noise"].unsqueeze(1)  # (B,1,10,10)
    return out
