"""Chest CT phantoms in HU from a structural causal model (MedSyn's domain).

    u ~ p(u)                      exogenous: body habitus, lung shape, fissure planes, airway and
                                  vessel trees, heart position, rib levels, effusion side, emphysema
                                  texture and type, nodule sites, CT noise
    sex, age ~ p(sex), U(30, 85)  lung size: male larger; smaller with age
    effusion ~ p(effusion)        none / small / large: dependent (posterior) fluid at 0-20 HU
    emphysema ~ p(emphysema)      none / mild / severe: share of lung below -950 HU, centrilobular
                                  (upper lobes) or panlobular (lower lobes) from u
    cardiomegaly ~ p(cm)          the cardiothoracic ratio (CTR): 0.42-0.50 or 0.56-0.68 from u
    nodules ~ p(nodules)          count of solid nodules at u's sites and sizes
    volume = render(u, attributes)

Geometry is in millimetres (RAS: +x towards the patient's right, +y anterior, +z superior; the
chest centred at the origin), so any grid shows the same subject. Partial volume: every
structure is a soft map of its signed distance over about a third of a voxel; CT noise is
Gaussian with u's sigma. The label map uses the convention of cfgen's CT measures
(cfgen/evaluation/ct.py): lobes 1-5 (RUL, RML, RLL, LUL, LLL), airway 6, vessel 7, heart 8,
effusion 9 (where a structure covers at least half the voxel; later ones paint over earlier).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from cfgen.phantoms.draw3d import affine, ellipsoid_sd as _ellipsoid_sd, grid_mm, soft as _soft  # noqa: F401

EFFUSION = ("none", "small", "large")
EMPHYSEMA = ("none", "mild", "severe")
ATTRIBUTES = ("effusion", "emphysema", "cardiomegaly", "nodules")
#: share of the aerated lung below -950 HU per emphysema grade (the texture's quantile)
EMPHYSEMA_SHARE = {"none": 0.0, "mild": 0.08, "severe": 0.25}
#: effusion: the fluid level above the lowest posterior lung point, as a share of the lung's AP depth
EFFUSION_LEVEL = {"none": 0.0, "small": 0.18, "large": 0.45}
MAX_NODULES = 6
AIR, FAT, SOFT, BLOOD, BONE, LUNG, EMPH, FLUID, FISSURE = -1000, -100, 40, 40, 700, -860, -985, 10, -650
LABELS = {"RUL": 1, "RML": 2, "RLL": 3, "LUL": 4, "LLL": 5, "airway": 6, "vessel": 7, "heart": 8, "effusion": 9}


@dataclass(frozen=True)
class CTAttributes:
    age: float = 60.0
    sex: str = "M"
    effusion: str = "none"
    emphysema: str = "none"
    cardiomegaly: bool = False
    nodules: int = 0

    def value(self, attribute: str) -> str:
        v = getattr(self, attribute)
        return ("1" if v else "0") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)

    def with_value(self, attribute: str, value) -> "CTAttributes":
        """The intervention do(attribute = value), checked."""
        if attribute in ("effusion", "emphysema"):
            allowed = EFFUSION if attribute == "effusion" else EMPHYSEMA
            if str(value) not in allowed:
                raise ValueError(f"{attribute} {value!r}: use {', '.join(allowed)}")
            return replace(self, **{attribute: str(value)})
        if attribute == "cardiomegaly":
            return replace(self, cardiomegaly=str(value).lower() in ("1", "true", "yes"))
        if attribute == "nodules":
            if not 0 <= int(value) <= MAX_NODULES:
                raise ValueError(f"nodules {value!r}: use 0-{MAX_NODULES}")
            return replace(self, nodules=int(value))
        raise ValueError(f"unknown attribute {attribute!r} (use {', '.join(ATTRIBUTES)})")


@dataclass(frozen=True)
class CTExogenous:
    body: tuple[float, float]  # body half-axes (x, y), mm
    lung: tuple[float, float, float]  # lung half-axes at age 60, male (mm)
    lung_gap: float  # mediastinal half-width between the lungs (mm)
    dome: float  # diaphragm dome height (mm)
    fissure: tuple[float, float, float]  # oblique fissure slope, its height, horizontal fissure height
    heart_y: float
    ctr_normal: float
    ctr_enlarged: float
    effusion_side: str  # right / left / both
    emph_type: str  # centrilobular / panlobular
    nodule_sites: tuple[tuple[float, float, float, float], ...]  # (x, y, z in lung units, radius mm)
    tree_seed: int
    texture_seed: int
    noise_hu: float
    seed: int


def sample_exogenous(rng: np.random.Generator) -> CTExogenous:
    u = rng.uniform
    sites = tuple((u(-0.6, 0.6), u(-0.6, 0.6), u(-0.5, 0.7), u(2.5, 9.0)) for _ in range(MAX_NODULES))
    return CTExogenous(
        body=(u(150, 175), u(105, 125)), lung=(u(50, 58), u(72, 84), u(105, 120)), lung_gap=u(14, 20),
        dome=u(25, 40), fissure=(u(0.8, 1.3), u(-0.2, 0.1), u(0.15, 0.35)), heart_y=u(20, 35),
        ctr_normal=u(0.42, 0.50), ctr_enlarged=u(0.56, 0.68),
        effusion_side=str(rng.choice(["right", "left", "both"])),
        emph_type=str(rng.choice(["centrilobular", "panlobular"])), nodule_sites=sites,
        tree_seed=int(rng.integers(0, 2**31 - 1)), texture_seed=int(rng.integers(0, 2**31 - 1)),
        noise_hu=u(8, 20), seed=int(rng.integers(0, 2**31 - 1)))


@dataclass(frozen=True)
class CTPrevalence:
    effusion: float = 0.4  # of which half small, half large
    emphysema: float = 0.35  # of which half mild, half severe
    cardiomegaly: float = 0.3
    nodules: float = 0.3


def sample_attributes(rng: np.random.Generator, prev: CTPrevalence) -> CTAttributes:
    age = round(float(rng.uniform(30, 85)), 1)
    sex = "F" if rng.uniform() < 0.5 else "M"
    eff = str(rng.choice(["small", "large"])) if rng.uniform() < prev.effusion else "none"
    p_emph = min(1.0, prev.emphysema * (0.5 + age / 80))  # emphysema likelier with age
    emph = str(rng.choice(["mild", "severe"])) if rng.uniform() < p_emph else "none"
    cm = bool(rng.uniform() < prev.cardiomegaly)
    nod = int(rng.integers(1, MAX_NODULES + 1)) if rng.uniform() < prev.nodules else 0
    return CTAttributes(age=age, sex=sex, effusion=eff, emphysema=emph, cardiomegaly=cm, nodules=nod)


def subject(seed: int, index: int, prev: CTPrevalence = CTPrevalence()) -> tuple[CTExogenous, CTAttributes]:
    """Subject ``index`` of data set ``seed``: depends on SeedSequence([seed, index]) alone."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    return sample_exogenous(rng), sample_attributes(rng, prev)


# --- mechanisms -------------------------------------------------------------------------------

def lung_scale(attrs: CTAttributes) -> float:
    return (1.0 if attrs.sex == "M" else 0.92) * (1 - 0.0015 * (attrs.age - 60))


def ctr_of(exo: CTExogenous, attrs: CTAttributes) -> float:
    return exo.ctr_enlarged if attrs.cardiomegaly else exo.ctr_normal


# --- rendering --------------------------------------------------------------------------------


def _segment_distance(x, y, z, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d), 0, 1)
    return np.sqrt((x - a[0] - t * d[0]) ** 2 + (y - a[1] - t * d[1]) ** 2 + (z - a[2] - t * d[2]) ** 2)


def _tree(seed: int, roots: list[tuple[np.ndarray, np.ndarray, float, float]], generations: int = 3):
    """Branching tubes: (start, end, radius) segments; each branch splits in two, shorter and thinner."""
    rng = np.random.default_rng(seed)
    out, level = [], roots
    for _ in range(generations):
        nxt = []
        for start, direction, length, radius in level:
            end = start + direction * length
            out.append((start, end, radius))
            for sign in (-1, 1):
                turn = rng.normal(0, 0.35, 3)
                turn[0] += sign * 0.45
                d = direction + turn
                nxt.append((end, d / np.linalg.norm(d), length * 0.72, radius * 0.68))
        level = nxt
    return out


def lung_sides(exo: CTExogenous, attrs: CTAttributes):
    """Per side (+1 right, -1 left): centre and half-axes of the lung ellipsoid (mm)."""
    s = lung_scale(attrs)
    rx, ry, rz = (a * s for a in exo.lung)
    return {side: ((side * (exo.lung_gap + rx), -5.0, 10.0), (rx, ry, rz)) for side in (1, -1)}


def _lungs(x, y, z, exo, attrs, edge):
    """Soft lung maps per side: an ellipsoid above the diaphragm dome."""
    out = {}
    for side, (c, r) in lung_sides(exo, attrs).items():
        dome = c[2] - r[2] * 0.55 + exo.dome * np.exp(-(((x - c[0]) / r[0]) ** 2 + (y / r[1]) ** 2))
        out[side] = _soft(_ellipsoid_sd(x, y, z, c, r), edge) * _soft(dome - z, edge)
    return out


def _lobes(x, y, z, exo, attrs) -> dict[str, np.ndarray]:
    """Hard lobe partitions of space (the lung maps decide what is lung): oblique fissures
    (planes rising anteriorly), the right horizontal fissure."""
    slope, h_obl, h_hor = exo.fissure
    out = {}
    for side, (c, r) in lung_sides(exo, attrs).items():
        below_oblique = (z - c[2]) < slope * (y - c[1]) * (r[2] / r[1]) * 0.6 + h_obl * r[2]
        if side == 1:
            out["RLL"], above = below_oblique, ~below_oblique
            out["RML"] = above & ((z - c[2]) < h_hor * r[2])
            out["RUL"] = above & ~out["RML"]
        else:
            out["LLL"], out["LUL"] = below_oblique, ~below_oblique
    side = x > 0
    return {k: v & (side if k[0] == "R" else ~side) for k, v in out.items()}


def _fissure_sd(y, z, exo, attrs, side_mask) -> np.ndarray:
    """Distance-like field to the fissure planes (for their thin denser line)."""
    slope, h_obl, h_hor = exo.fissure
    d = np.full(y.shape, 1e3, np.float32)
    for side, (c, r) in lung_sides(exo, attrs).items():
        k = slope * (r[2] / r[1]) * 0.6
        obl = np.abs((z - c[2]) - k * (y - c[1]) - h_obl * r[2]) / math.sqrt(1 + k * k)
        plane = obl if side == -1 else np.minimum(obl, np.abs((z - c[2]) - h_hor * r[2]))
        d = np.where(side_mask if side == 1 else ~side_mask, np.minimum(d, plane), d)
    return d


@lru_cache(maxsize=4)
def _texture(seed: int, size: int, spacing: float) -> np.ndarray:
    """Band-limited noise in mm space (secondary-lobule scale, 8 mm): the emphysema texture."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)
    n = 64
    coarse = rng.standard_normal((n,) * 3).astype(np.float32)
    coords = [v.ravel() / 8.0 + (n - 1) / 2 for v in grid_mm(size, spacing)]
    f = map_coordinates(coarse, coords, order=3, mode="wrap").reshape((size,) * 3)
    f.setflags(write=False)
    return f


def _emphysema(lung: np.ndarray, z, exo, attrs, size, spacing) -> np.ndarray:
    """Where the lung is destroyed (soft): the texture above its quantile, weighted to the upper
    (centrilobular) or lower (panlobular) lung, so the share of the lung is the grade's."""
    share = EMPHYSEMA_SHARE[attrs.emphysema]
    if share == 0:
        return np.zeros_like(lung)
    zn = (z - z[lung > 0.5].min()) / max(float(np.ptp(z[lung > 0.5])), 1.0) if (lung > 0.5).any() else z * 0
    weight = zn if exo.emph_type == "centrilobular" else 1 - zn
    field = _texture(exo.texture_seed, size, float(spacing)) + 1.5 * weight
    inside = lung > 0.5
    thr = np.quantile(field[inside], 1 - share) if inside.any() else np.inf
    return _soft(thr - field, 0.05) * lung


def _effusion(x, y, z, lungs, exo, attrs, edge) -> np.ndarray:
    """Dependent fluid: the posterior part of the affected lungs below a level above their
    lowest posterior point."""
    level = EFFUSION_LEVEL[attrs.effusion]
    fluid = np.zeros_like(x)
    if level == 0:
        return fluid
    for side, (c, r) in lung_sides(exo, attrs).items():
        if exo.effusion_side not in ("both", "right" if side == 1 else "left"):
            continue
        y_level = c[1] - r[1] + level * 2 * r[1]
        fluid = np.maximum(fluid, lungs[side] * _soft(y - y_level, edge))
    return fluid


def _heart(x, y, z, exo, attrs, thorax_width: float, edge) -> np.ndarray:
    w = ctr_of(exo, attrs) * thorax_width / 2  # half-width
    return _soft(_ellipsoid_sd(x, y, z, (-0.25 * w, exo.heart_y, -25.0), (w, 0.75 * w, 0.8 * w)), edge)


def _nodules(x, y, z, exo, attrs, edge) -> np.ndarray:
    out = np.zeros_like(x)
    for k, (ux, uy, uz, radius) in enumerate(exo.nodule_sites[:attrs.nodules]):
        side = 1 if k % 2 == 0 else -1
        c, r = lung_sides(exo, attrs)[side]
        centre = (c[0] + ux * r[0] * 0.6, c[1] + uy * r[1] * 0.6, c[2] + uz * r[2] * 0.5)
        out = np.maximum(out, _soft(_ellipsoid_sd(x, y, z, centre, (radius,) * 3), edge))
    return out


def _tubes(x, y, z, segments, edge) -> np.ndarray:
    out = np.zeros_like(x)
    for a, b, radius in segments:
        out = np.maximum(out, _soft(_segment_distance(x, y, z, a, b) - radius, edge))
    return out


def _airway_vessel_roots(exo: CTExogenous):
    carina = np.array([0.0, 0.0, 40.0])
    airway = [(np.array([0.0, 0.0, 190.0]), np.array([0.0, 0.0, -1.0]), 150.0, 8.0)]  # the trachea
    bronchi = [(carina, np.array([s * 0.8, 0.0, -0.6]) / 1.0, 45.0, 6.0) for s in (1, -1)]
    vessels = [(np.array([s * 25.0, exo.heart_y * 0.3, 0.0]), np.array([s * 0.85, -0.2, 0.45]), 55.0, 6.0)
               for s in (1, -1)]
    vessels += [(np.array([s * 25.0, exo.heart_y * 0.3, -10.0]), np.array([s * 0.7, -0.4, -0.6]), 55.0, 5.5)
                for s in (1, -1)]
    return airway, bronchi, vessels


def tissue_maps(exo: CTExogenous, attrs: CTAttributes, size: int = 64, spacing: float = 6.0) -> dict[str, np.ndarray]:
    """Soft maps (partial volume, [0, 1]) of every structure, and ``lobes``: the hard lobe partitions."""
    x, y, z = grid_mm(size, spacing)
    edge = 0.35 * spacing
    bx, by = exo.body
    body = _soft((np.sqrt((x / bx) ** 2 + (y / by) ** 2) - 1) * by, edge) * _soft(np.abs(z) - 190, edge)
    muscle = _soft((np.sqrt((x / (bx - 15)) ** 2 + (y / (by - 15)) ** 2) - 1) * by, edge) * body
    ribs = muscle * _soft(np.abs(np.sqrt((x / (bx - 22)) ** 2 + (y / (by - 22)) ** 2) - 1) * by - 4, edge)
    ribs = ribs * _soft(np.abs(((z + 200) % 28) - 14) - 4, edge)
    spine = _soft(np.sqrt(x ** 2 + (y + by - 38) ** 2) - 17, edge) * _soft(np.abs(z) - 190, edge)
    thorax_width = 2 * (exo.lung_gap + 2 * exo.lung[0] * lung_scale(attrs))  # the lungs' outer extent
    heart = _heart(x, y, z, exo, attrs, thorax_width, edge)
    lungs = {side: m * (1 - heart) for side, m in _lungs(x, y, z, exo, attrs, edge).items()}  # the heart displaces lung
    lung = np.maximum(lungs[1], lungs[-1])
    airway, bronchi, vessels = _airway_vessel_roots(exo)
    trachea = _tubes(x, y, z, [(a, a + d * ln, r) for a, d, ln, r in airway], edge)
    bron = _tubes(x, y, z, _tree(exo.tree_seed, bronchi), edge)
    vess = _tubes(x, y, z, _tree(exo.tree_seed + 1, vessels), edge) * lung
    return {"body": body, "muscle": muscle, "ribs": ribs, "spine": spine, "lung": lung,
            "airway": np.maximum(trachea, bron), "vessel": vess, "heart": heart,
            "effusion": _effusion(x, y, z, lungs, exo, attrs, edge), "lobes": _lobes(x, y, z, exo, attrs),
            "emphysema": _emphysema(lung, z, exo, attrs, size, spacing),
            "fissure": _soft(_fissure_sd(y, z, exo, attrs, x > 0) - 0.6, edge) * lung,
            "nodules": _nodules(x, y, z, exo, attrs, edge) * lung}


def compose(maps: dict[str, np.ndarray]) -> np.ndarray:
    """The noise-free HU volume (later maps paint over earlier ones)."""
    paint = (("body", FAT), ("muscle", SOFT), ("ribs", BONE), ("spine", BONE), ("lung", LUNG), ("fissure", FISSURE),
             ("emphysema", EMPH), ("vessel", BLOOD), ("nodules", SOFT), ("effusion", FLUID), ("heart", BLOOD),
             ("airway", AIR))
    img = np.full(maps["body"].shape, float(AIR), np.float32)
    for name, hu in paint:
        img = img * (1 - maps[name]) + maps[name] * hu
    return img.astype(np.float32)


def acquire(clean: np.ndarray, exo: CTExogenous, noise_seed: int | None = None) -> np.ndarray:
    """CT noise (Gaussian, u's sigma), HU rounded and clipped to [-1024, 3071]."""
    rng = np.random.default_rng(exo.seed + 1 if noise_seed is None else noise_seed)
    img = clean + exo.noise_hu * rng.standard_normal(clean.shape).astype(np.float32)
    return np.clip(np.round(img), -1024, 3071).astype(np.int16)


def render_clean(exo, attrs, size: int = 64, spacing: float = 6.0) -> np.ndarray:
    return compose(tissue_maps(exo, attrs, size, spacing))


def render(exo, attrs, size: int = 64, spacing: float = 6.0) -> np.ndarray:
    return acquire(render_clean(exo, attrs, size, spacing), exo)


def ideal_edit(factual: np.ndarray, clean_alt: np.ndarray, exo: CTExogenous, region: np.ndarray) -> np.ndarray:
    """The floor: the true noise-free change with an independent noise draw inside ``region``."""
    return np.where(region, acquire(clean_alt, exo, noise_seed=exo.seed + 2), factual).astype(np.int16)


def mask_between(clean_a: np.ndarray, clean_b: np.ndarray, threshold_hu: float = 20.0) -> np.ndarray:
    return np.abs(clean_a - clean_b) > threshold_hu


def label_map(maps: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 labels (LABELS): lobes where the lung covers half the voxel, then airway, vessel,
    heart, effusion painted over."""
    out = np.zeros(maps["body"].shape, np.uint8)
    lung = maps["lung"] >= 0.5
    for name, part in maps["lobes"].items():
        out[lung & part] = LABELS[name]
    for name in ("airway", "vessel", "heart", "effusion"):
        out[maps[name] >= 0.5] = LABELS[name]
    return out


def measurements(maps: dict[str, np.ndarray], exo: CTExogenous, attrs: CTAttributes, spacing: float,
                 clean: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict:
    """Ground truth: effusion and lung volumes (mL) from the soft maps, the share of the aerated
    lung voxels (lobe labels, below -50 HU) whose noise-free HU is below -950 (%LAA-950 as defined,
    on this grid), and the CTR the heart was drawn with. ``clean`` / ``labels``: compose(maps) and
    label_map(maps) when the caller has them."""
    ml = spacing ** 3 / 1000.0
    clean = compose(maps) if clean is None else clean
    lab = label_map(maps) if labels is None else labels
    aerated = (((lab >= 1) & (lab <= 5)) | (lab == LABELS["effusion"])) & (clean < -50)  # as cfgen.evaluation.ct
    laa = 100.0 * float((aerated & (clean < -950)).sum()) / max(int(aerated.sum()), 1)
    return {"effusion_ml": float(maps["effusion"].sum() * ml), "lung_ml": float(maps["lung"].sum() * ml),
            "laa950_pct": laa, "ctr": ctr_of(exo, attrs)}


def counterfactual_attributes(exo: CTExogenous, attrs: CTAttributes) -> dict[str, CTAttributes]:
    """The single-attribute counterfactuals written per subject: effusion none <-> large (small ->
    none), emphysema none <-> severe (mild -> none), cardiomegaly toggled, nodules removed or
    added (three at u's sites)."""
    return {"effusion": attrs.with_value("effusion", "large" if attrs.effusion == "none" else "none"),
            "emphysema": attrs.with_value("emphysema", "severe" if attrs.emphysema == "none" else "none"),
            "cardiomegaly": replace(attrs, cardiomegaly=not attrs.cardiomegaly),
            "nodules": attrs.with_value("nodules", 0 if attrs.nodules else 3)}

