"""Chest-radiograph phantoms from a structural causal model.

    u ~ p(u)                       exogenous: the patient (habitus, lungs, heart, ribs, position,
                                   exposure, noise, corner marker) and where devices would sit
    effusion ~ p(effusion)         none / small / large (side and size of a large one from u)
    cardiomegaly ~ p(cardiomegaly) cardiothoracic ratio from u: normal 0.42-0.50, enlarged 0.56-0.70
    devices ~ p(devices | effusion)   correlated by ``device_effusion_corr`` (as in CheXpert)
    image = render(u, attributes)

An intervention keeps u and the other attributes fixed, so the true counterfactual of a
single-attribute flip is ``render(u, attributes')``, and the region that should change is
where the two noise-free renders differ.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np

from cfgen.phantoms.draw import bezier, ellipse_sd, grid, line_mask, smooth_noise, soft

EFFUSION_LEVELS = ("none", "small", "large")
ATTRIBUTES = ("effusion", "cardiomegaly", "devices")
#: the CheXpert label column each attribute sets
LABEL_OF = {"effusion": "Pleural Effusion", "cardiomegaly": "Cardiomegaly", "devices": "Support Devices"}

# intensities of the noise-free image, before exposure (brighter = more attenuating)
AIR, LUNG, SOFT, BONE, FLUID, METAL = 0.04, 0.16, 0.46, 0.16, 0.47, 0.97


@dataclass(frozen=True)
class CXRAttributes:
    effusion: int = 0  # 0 none, 1 small, 2 large
    cardiomegaly: int = 0
    devices: int = 0

    def flipped(self, attribute: str, exo: "CXRExogenous") -> "CXRAttributes":
        """The single-attribute counterfactual: present -> absent, absent -> present (u's form)."""
        if attribute == "effusion":
            return replace(self, effusion=0 if self.effusion else exo.effusion_if_present)
        if attribute == "cardiomegaly":
            return replace(self, cardiomegaly=1 - self.cardiomegaly)
        if attribute == "devices":
            return replace(self, devices=1 - self.devices)
        raise ValueError(f"unknown attribute {attribute!r} (use {', '.join(ATTRIBUTES)})")

    def value(self, attribute: str) -> str:
        v = getattr(self, attribute)
        return EFFUSION_LEVELS[v] if attribute == "effusion" else str(v)


@dataclass(frozen=True)
class CXRExogenous:
    """Everything about the patient and the acquisition that no attribute changes."""

    sex: str
    age: int
    cx: float
    cy: float
    thorax_w: float  # half width of the inner thorax
    lung_top: float
    lung_base: tuple[float, float]  # diaphragm height, image-left and image-right lung
    dome: float
    ctr_normal: float
    ctr_enlarged: float
    heart_shift: float
    rib_spacing: float
    rib_phase: float
    rib_bend: float
    gain: float
    offset: float
    gamma: float
    noise_sigma: float
    seed: int  # texture and noise
    marker: str
    marker_right: bool
    effusion_side: int  # -1 image-left, +1 image-right, 0 both
    effusion_if_present: int  # severity used when the counterfactual adds effusion
    leads: tuple[tuple[float, float], ...]
    pacemaker: bool
    pacemaker_xy: tuple[float, float]
    tube: bool

    def ctr(self, attrs: CXRAttributes) -> float:
        return self.ctr_enlarged if attrs.cardiomegaly else self.ctr_normal


def sample_exogenous(rng: np.random.Generator) -> CXRExogenous:
    u = rng.uniform
    sex = "Female" if u() < 0.5 else "Male"
    tw = u(0.62, 0.72) if sex == "Female" else u(0.68, 0.78)
    base = u(0.5, 0.62)
    n_leads = int(rng.integers(3, 6))
    leads = tuple((float(u(-0.75, 0.75) * tw), float(u(-0.55, 0.45))) for _ in range(n_leads))
    return CXRExogenous(
        sex=sex, age=int(rng.integers(20, 90)), cx=u(-0.04, 0.04), cy=u(-0.04, 0.04), thorax_w=tw,
        lung_top=u(-0.82, -0.72), lung_base=(base + u(-0.03, 0.01), base + u(0.0, 0.05)), dome=u(0.06, 0.12),
        ctr_normal=u(0.42, 0.50), ctr_enlarged=u(0.56, 0.70), heart_shift=u(0.08, 0.16),
        rib_spacing=u(0.13, 0.17), rib_phase=u(0, 1), rib_bend=u(0.25, 0.45),
        gain=u(0.85, 1.15), offset=u(-0.04, 0.04), gamma=u(0.85, 1.15), noise_sigma=u(0.008, 0.02),
        seed=int(rng.integers(0, 2**31 - 1)), marker="L" if u() < 0.5 else "R", marker_right=bool(u() < 0.5),
        effusion_side=int(rng.choice([-1, 1, 0], p=[0.35, 0.35, 0.3])), effusion_if_present=int(rng.integers(1, 3)),
        leads=leads, pacemaker=bool(u() < 0.6), pacemaker_xy=(float(u(0.35, 0.55) * tw), float(u(-0.62, -0.5))),
        tube=bool(u() < 0.6),
    )


@dataclass(frozen=True)
class Prevalence:
    effusion: float = 0.4
    cardiomegaly: float = 0.3
    devices: float = 0.5
    device_effusion_corr: float = 0.6  # 0: independent; 1: devices iff effusion


def sample_attributes(rng: np.random.Generator, prev: Prevalence, exo: CXRExogenous) -> CXRAttributes:
    effusion = exo.effusion_if_present if rng.uniform() < prev.effusion else 0
    c = prev.device_effusion_corr
    p_dev = prev.devices + c * (1 - prev.devices) if effusion else prev.devices * (1 - c)
    return CXRAttributes(effusion=effusion, cardiomegaly=int(rng.uniform() < prev.cardiomegaly),
                         devices=int(rng.uniform() < p_dev))


def subject(seed: int, index: int, prev: Prevalence = Prevalence()) -> tuple[CXRExogenous, CXRAttributes]:
    """Image ``index`` of the data set drawn with ``seed``: renderable on its own."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    exo = sample_exogenous(rng)
    return exo, sample_attributes(rng, prev, exo)


@lru_cache(maxsize=4)
def _grid(size: int):
    return grid(size)


@lru_cache(maxsize=8)
def _marker_bitmap(letter: str, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    h = max(8, size // 14)
    font = ImageFont.load_default(size=h)
    im = Image.new("L", (h * 2, h * 2), 0)
    ImageDraw.Draw(im).text((h // 3, 0), letter, fill=255, font=font)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(arr > 0)
    return arr[: rows.max() + 2, : cols.max() + 2] if rows.size else arr


def _lungs(x, y, exo: CXRExogenous, edge: float) -> list[np.ndarray]:
    masks = []
    tw = exo.thorax_w
    for side, base in zip((-1, 1), exo.lung_base):
        xc = exo.cx + side * tw * 0.5
        rx = tw * 0.47
        top = exo.cy + exo.lung_top
        cy = exo.cy + (top + base) / 2
        ry = (base - top) / 2 + 0.06
        outline = ellipse_sd(x, y, xc, cy, rx, ry, power=2.6)
        # diaphragm: a dome, highest mid-lung, reaching the costophrenic angle laterally
        diaphragm = exo.cy + base - exo.dome * (1 - np.clip(((x - xc) / rx) ** 2, 0, 1))
        masks.append(soft(outline, edge) * soft(y - diaphragm, edge))
    return masks


def _ribs(x, y, exo: CXRExogenous, edge: float) -> np.ndarray:
    tw = exo.thorax_w
    xs = np.abs(x - exo.cx) / tw
    phase = (y - exo.cy + exo.rib_bend * xs ** 2) / exo.rib_spacing + exo.rib_phase
    band = np.abs(phase - np.round(phase)) * exo.rib_spacing  # distance to the nearest rib centre
    ribs = soft(band - 0.017, edge) * soft(xs - 0.98, edge)
    below_diaphragm = y - (exo.cy + max(exo.lung_base) + 0.08)
    return ribs * soft(-(y - exo.cy + 0.78), edge) * soft(below_diaphragm, edge * 4)


def _effusion(x, y, exo: CXRExogenous, level: int, lungs: list[np.ndarray], edge: float) -> np.ndarray:
    if level == 0:
        return np.zeros_like(x)
    fluid = np.zeros_like(x)
    height = (0.10, 0.30)[level - 1] * (exo.lung_base[0] - exo.lung_top)
    tw = exo.thorax_w
    for side, lung, base in zip((-1, 1), lungs, exo.lung_base):
        if exo.effusion_side not in (0, side):
            continue
        lateral = np.clip(side * (x - exo.cx) / tw, 0, 1.2)  # 0 at the midline, 1 at the wall
        # meniscus: the fluid surface climbs the lateral chest wall
        surface = exo.cy + base - height - 0.16 * (level + 0.5) * lateral ** 2
        fluid = np.maximum(fluid, lung * soft(surface - y, edge * 2.5))
    return fluid


def _devices(x, y, exo: CXRExogenous, edge: float, size: int) -> np.ndarray:
    tw, m = exo.thorax_w, np.zeros_like(x)
    r_lead = 0.028
    for i, (lx, ly) in enumerate(exo.leads):
        px, py = exo.cx + lx, exo.cy + ly
        ring = np.abs(np.hypot(x - px, y - py) - r_lead) - 0.006
        m = np.maximum(m, soft(ring, edge) + 0.5 * soft(np.hypot(x - px, y - py) - r_lead * 0.4, edge))
        end = (exo.cx + np.sign(lx or 1) * (tw + 0.35), exo.cy + ly + 0.35 + 0.08 * i)
        ctrl = ((px + end[0]) / 2, py + 0.25)
        m = np.maximum(m, line_mask(x, y, bezier((px, py), ctrl, end), 0.0035, edge))
    if exo.pacemaker:
        px, py = exo.cx + exo.pacemaker_xy[0], exo.cy + exo.pacemaker_xy[1]
        box = ellipse_sd(x, y, px, py, 0.085, 0.06, power=4.0)
        m = np.maximum(m, soft(box, edge))
        heart = (exo.cx + tw * 0.12, exo.cy + exo.lung_base[1] - 0.2)
        lead = bezier((px - 0.05, py + 0.03), (exo.cx - 0.05, exo.cy - 0.2), heart)
        m = np.maximum(m, line_mask(x, y, lead, 0.006, edge))
    if exo.tube:
        tube = bezier((exo.cx - 0.01, -1.05), (exo.cx + 0.02, exo.cy - 0.5), (exo.cx - 0.03, exo.cy - 0.12))
        m = np.maximum(m, 0.8 * line_mask(x, y, tube, 0.009, edge))
    return np.clip(m, 0, 1)


def render_clean(exo: CXRExogenous, attrs: CXRAttributes, size: int = 256) -> np.ndarray:
    """The noise-free image in [0, 1] before exposure: what the counterfactual mask compares."""
    x, y = _grid(size)
    edge = 1.5 / size
    tw = exo.thorax_w
    body = soft(ellipse_sd(x, y, exo.cx, exo.cy + 0.25, tw * 1.22, 1.45, power=2.4), edge * 2)
    img = AIR + (SOFT - AIR) * body
    lungs = _lungs(x, y, exo, edge * 2)
    rng = np.random.default_rng(exo.seed)
    texture = smooth_noise(rng, size, max(4, size // 24))
    lung = np.clip(lungs[0] + lungs[1], 0, 1)
    # cardiac silhouette: CTR = cardiac width / thoracic width, sitting on the diaphragm
    ctr = exo.ctr(attrs)
    hx = ctr * tw
    hy = hx * 0.78
    hcx = exo.cx + exo.heart_shift * tw * (ctr / 0.46) * 0.6
    hcy = exo.cy + exo.lung_base[1] - exo.dome - hy * 0.55
    heart = soft(ellipse_sd(x, y, hcx, hcy, hx, hy), edge * 2)
    mediastinum = soft(np.abs(x - exo.cx) - 0.11 * tw, edge * 2) * soft(y - (exo.cy + exo.lung_base[1]), edge)
    fluid = _effusion(x, y, exo, attrs.effusion, lungs, edge)
    air = lung * (1 - heart) * (1 - mediastinum) * (1 - fluid)
    img = img - (SOFT - LUNG) * air * (1 + 0.12 * texture)
    img = img + 0.04 * heart * (1 - air)
    img = img + BONE * _ribs(x, y, exo, edge * 1.5) * body
    spine = soft(np.abs(x - exo.cx) - 0.065, edge * 2) * body
    img = img + 0.12 * spine
    for side in (-1, 1):  # clavicles
        clav = bezier((exo.cx + side * 0.06, exo.cy - 0.74), (exo.cx + side * tw * 0.5, exo.cy - 0.8),
                      (exo.cx + side * tw * 1.0, exo.cy - 0.9))
        img = img + 0.14 * line_mask(x, y, clav, 0.025, edge * 2)
    if attrs.devices:
        dev = _devices(x, y, exo, edge, size)
        img = img * (1 - dev) + METAL * dev
    return np.clip(img, 0, 1).astype(np.float32)


def _acquire(clean: np.ndarray, exo: CXRExogenous, size: int, noise_seed: int | None = None) -> np.ndarray:
    img = np.clip(exo.gain * clean + exo.offset, 0, 1) ** exo.gamma
    rng = np.random.default_rng(exo.seed + 1 if noise_seed is None else noise_seed)
    img = img + exo.noise_sigma * rng.standard_normal(img.shape).astype(np.float32)
    bm = _marker_bitmap(exo.marker, size)
    h, w = bm.shape
    r0 = size // 20
    c0 = size - r0 - w if exo.marker_right else r0
    patch = img[r0:r0 + h, c0:c0 + w]
    img[r0:r0 + h, c0:c0 + w] = patch * (1 - bm) + 0.95 * bm
    return np.clip(img, 0, 1).astype(np.float32)


def acquire(clean: np.ndarray, exo: CXRExogenous) -> np.ndarray:
    """Exposure, quantum noise and the corner marker: the same for a factual and its counterfactuals."""
    return _acquire(clean, exo, clean.shape[0])


def ideal_edit(factual: np.ndarray, clean_alt: np.ndarray, exo: CXRExogenous, region: np.ndarray) -> np.ndarray:
    """The floor of any editor: it knows the true noise-free change and the exposure but not the
    quantum-noise realisation, so inside ``region`` it renders the counterfactual with an
    independent noise draw; outside it returns the factual image."""
    fresh = _acquire(clean_alt, exo, clean_alt.shape[0], noise_seed=exo.seed + 2)
    return np.where(region, fresh, factual).astype(np.float32)


#: exogenous fields of the change that the factual scan and the target caption do not show: added
#: devices sit where u put them, an added effusion takes u's side and size, the new CTR is u's
HIDDEN = {("add", "devices"): ("leads", "pacemaker", "pacemaker_xy", "tube"),
          ("add", "effusion"): ("effusion_side", "effusion_if_present"),
          ("add", "cardiomegaly"): ("ctr_enlarged",), ("remove", "cardiomegaly"): ("ctr_normal",)}
#: the seed stream of the redraw, apart from the subject's own (SeedSequence([seed, index]))
PLAUSIBLE_STREAM = 17


def plausible_exogenous(exo: CXRExogenous, attrs: CXRAttributes, attribute: str) -> CXRExogenous:
    """u with the fields the flip of ``attribute`` depends on but the scan and caption cannot
    show (HIDDEN) drawn again from their prior: another subject-world the editor cannot tell apart."""
    verb = "remove" if getattr(attrs, attribute) else "add"
    hidden = HIDDEN.get((verb, attribute), ())
    stream = np.random.SeedSequence([exo.seed, PLAUSIBLE_STREAM, ATTRIBUTES.index(attribute)])
    fresh = sample_exogenous(np.random.default_rng(stream))
    return replace(exo, **{f: getattr(fresh, f) for f in hidden})


def sample_floor_edit(factual: np.ndarray, clean_factual: np.ndarray, exo: CXRExogenous, attrs: CXRAttributes,
                      attribute: str) -> np.ndarray:
    """The floor of an editor that samples a plausible counterfactual: the ideal editor (true
    noise-free change, independent noise inside its region) of a world that agrees with the scan
    and the caption but draws what neither shows (plausible_exogenous) anew; equal to the floor
    when nothing is hidden (removing devices or effusion). ``clean_factual``: render_clean(exo, attrs)."""
    alt_exo = plausible_exogenous(exo, attrs, attribute)
    clean_alt = render_clean(alt_exo, attrs.flipped(attribute, alt_exo), clean_factual.shape[0])
    region = mask_between(clean_factual, clean_alt)
    return ideal_edit(factual, clean_alt, exo, region)


def edit_cases(n: int, seed: int, prev: Prevalence = Prevalence()):
    """(edit type, exo, factual attributes, counterfactual attributes), subjects 0, 1, ... of
    ``seed``, until each edit type ("remove effusion", "add devices", ...) has ``n`` cases."""
    want = {f"{verb} {a}": n for a in ATTRIBUTES for verb in ("remove", "add")}
    i = 0
    while any(want.values()):
        exo, attrs = subject(seed, i, prev)
        for a in ATTRIBUTES:
            kind = f"{'remove' if getattr(attrs, a) else 'add'} {a}"
            if want[kind]:
                want[kind] -= 1
                yield kind, exo, attrs, attrs.flipped(a, exo)
        i += 1


def render(exo: CXRExogenous, attrs: CXRAttributes, size: int = 256) -> np.ndarray:
    """The radiograph in [0, 1]: render_clean, then exposure, quantum noise and the marker."""
    return _acquire(render_clean(exo, attrs, size), exo, size)


def mask_between(clean_a: np.ndarray, clean_b: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """Where two noise-free renders differ by more than ``threshold``, grown by one pixel."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(np.abs(clean_a - clean_b) > threshold, iterations=1)


def difference_mask(exo: CXRExogenous, a: CXRAttributes, b: CXRAttributes, size: int = 256,
                    threshold: float = 0.01) -> np.ndarray:
    """Where the true counterfactual differs from the factual (noise-free renders), as bool."""
    return mask_between(render_clean(exo, a, size), render_clean(exo, b, size), threshold)


def labels_row(exo: CXRExogenous, attrs: CXRAttributes) -> dict[str, str]:
    """CheXpert-style labels (1.0 / blank) plus the phantom's true values."""
    pos = lambda v: "1.0" if v else ""  # noqa: E731  (CheXpert leaves negatives blank)
    return {
        "Sex": exo.sex, "Age": str(exo.age),
        "No Finding": pos(not attrs.effusion and not attrs.cardiomegaly),
        "Cardiomegaly": pos(attrs.cardiomegaly), "Pleural Effusion": pos(attrs.effusion),
        "Support Devices": pos(attrs.devices),
        "effusion_severity": EFFUSION_LEVELS[attrs.effusion], "ctr": f"{exo.ctr(attrs):.3f}",
        "pacemaker": str(int(attrs.devices and exo.pacemaker)),
    }


def exogenous_dict(exo: CXRExogenous) -> dict:
    return asdict(exo)
