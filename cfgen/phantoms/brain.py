"""T1-weighted brain MRI phantoms from a structural causal model.

    u ~ p(u)                       exogenous: head shape, cortical folding pattern, ventricle and
                                   hippocampus shape, lesion sites, intensities, bias field, noise
    sex ~ p(sex)                   head (intracranial) size: female about 7% smaller per axis
    age ~ U(20, 90)                ventricles grow, cortex thins, sulci widen, brain shrinks
    diagnosis ~ p(dx | age)        CN / MCI / AD: hippocampal atrophy and extra ventricular growth
    lesion_load ~ p(lesion_load)   MS-like periventricular white-matter lesions (mL), T1-dark
    volume = render(u, attributes)

Geometry is in millimetres (RAS, the head centred at the origin) and independent of the grid:
the same subject rendered at 64^3 x 3 mm and 128^3 x 1.5 mm is the same anatomy. An
intervention keeps u and the other attributes, so the true counterfactual of an edit is
``render(u, attributes')`` and the region that should change is where the noise-free renders
differ. Age effects are smooth and monotone on [0, 100] years so any age edit has a direction.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

import numpy as np

from cfgen.phantoms.draw3d import affine, ellipsoid_sd as _ellipsoid_sd, grid_mm, soft as _soft  # noqa: F401

DIAGNOSES = ("CN", "MCI", "AD")
ATTRIBUTES = ("age", "sex", "diagnosis", "lesion_load")
AGE_RANGE = (0.0, 100.0)
MAX_LESION_ML = 40.0
#: the label column each attribute sets (the brain caption template reads these)
LABEL_OF = {"age": "Age", "sex": "Sex", "diagnosis": "Diagnosis", "lesion_load": "lesion_load"}

# T1 intensities of the noise-free volume
BACKGROUND, SCALP, SKULL, CSF, GM, DEEP_GM, WM, LESION = 0.0, 0.72, 0.07, 0.12, 0.50, 0.62, 0.82, 0.36
LESION_SITES = 16
FOLD_SPACING_MM = 9.0  # cortical folding: band-limited noise on a grid of this spacing
FOLD_GRID = 32  # nodes per axis (covers 288 mm)


@dataclass(frozen=True)
class BrainAttributes:
    age: float = 50.0
    sex: str = "F"  # F / M
    diagnosis: str = "CN"
    lesion_load: float = 0.0  # mL

    def value(self, attribute: str) -> str:
        v = getattr(self, attribute)
        return f"{v:g}" if isinstance(v, float) else str(v)

    def with_value(self, attribute: str, value) -> BrainAttributes:
        """The intervention do(attribute = value), checked."""
        if attribute == "age":
            age = float(value)
            if not AGE_RANGE[0] <= age <= AGE_RANGE[1]:
                raise ValueError(f"age {age:g} outside [{AGE_RANGE[0]:g}, {AGE_RANGE[1]:g}]")
            return replace(self, age=round(age, 1))
        if attribute == "sex":
            sex = str(value).upper()[:1]
            if sex not in ("F", "M"):
                raise ValueError(f"sex {value!r}: use F or M")
            return replace(self, sex=sex)
        if attribute == "diagnosis":
            if str(value).upper() not in DIAGNOSES:
                raise ValueError(f"diagnosis {value!r}: use {', '.join(DIAGNOSES)}")
            return replace(self, diagnosis=str(value).upper())
        if attribute == "lesion_load":
            load = float(value)
            if not 0.0 <= load <= MAX_LESION_ML:
                raise ValueError(f"lesion_load {load:g} outside [0, {MAX_LESION_ML:g}] mL")
            return replace(self, lesion_load=round(load, 1))
        raise ValueError(f"unknown attribute {attribute!r} (use {', '.join(ATTRIBUTES)})")


@dataclass(frozen=True)
class BrainExogenous:
    """Everything about the subject and the scan that no attribute changes."""

    head: tuple[float, float, float]  # head half-axes (mm) before the sex factor
    centre: tuple[float, float, float]
    vent_shape: tuple[float, float, float]  # ventricle half-axes at age 50, CN (mm)
    vent_sep: float
    hippo_scale: float
    sulcus_base: float  # sulcal width at age 50 (fraction of the folding field)
    lesion_sites: tuple[tuple[float, float, float, float], ...]  # (azimuth, height, offset mm, elongation)
    lesion_alt_load: float  # load (mL) a counterfactual gives a subject without lesions
    gain: float
    noise_sigma: float
    seed: int


def sample_exogenous(rng: np.random.Generator) -> BrainExogenous:
    u = rng.uniform
    sites = tuple((u(0, 2 * math.pi), u(-0.8, 0.8), u(3.0, 9.0), u(1.0, 2.2)) for _ in range(LESION_SITES))
    return BrainExogenous(
        head=(u(68, 74), u(86, 94), u(70, 78)), centre=(u(-2, 2), u(-3, 3), u(-2, 2)),
        vent_shape=(u(4.0, 5.5), u(19, 24), u(7, 9)), vent_sep=u(5.5, 7.5), hippo_scale=u(0.92, 1.08),
        sulcus_base=u(0.07, 0.10), lesion_sites=sites, lesion_alt_load=round(u(4.0, 20.0), 1),
        gain=u(0.9, 1.1), noise_sigma=u(0.012, 0.025), seed=int(rng.integers(0, 2**31 - 1)))


@dataclass(frozen=True)
class BrainPrevalence:
    ms: float = 0.3  # fraction with lesions
    mean_lesion_ml: float = 8.0


def sample_attributes(rng: np.random.Generator, prev: BrainPrevalence) -> BrainAttributes:
    age = round(float(rng.uniform(20, 90)), 1)
    sex = "F" if rng.uniform() < 0.5 else "M"
    # Alzheimer's stage becomes likelier with age (the causal arrow age -> diagnosis)
    p_ad = 1 / (1 + math.exp(-(age - 78) / 5)) * 0.5
    p_mci = 1 / (1 + math.exp(-(age - 70) / 6)) * 0.3
    r = rng.uniform()
    dx = "AD" if r < p_ad else "MCI" if r < p_ad + p_mci else "CN"
    load = 0.0
    if rng.uniform() < prev.ms:
        load = round(float(min(MAX_LESION_ML, 0.5 + rng.exponential(prev.mean_lesion_ml))), 1)
    return BrainAttributes(age=age, sex=sex, diagnosis=dx, lesion_load=load)


def subject(seed: int, index: int, prev: BrainPrevalence = BrainPrevalence()) -> tuple[BrainExogenous, BrainAttributes]:
    """Subject ``index`` of data set ``seed``: depends on SeedSequence([seed, index]) alone."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    exo = sample_exogenous(rng)
    return exo, sample_attributes(rng, prev)


# --- the causal mechanisms (smooth, monotone in age on [0, 100]) ---------------------------

def _stage(dx: str) -> int:
    return DIAGNOSES.index(dx)


def ventricle_scale(attrs: BrainAttributes) -> float:
    return math.exp(0.011 * (attrs.age - 50)) * (1 + 0.12 * _stage(attrs.diagnosis))


def hippocampus_scale(exo: BrainExogenous, attrs: BrainAttributes) -> float:
    return exo.hippo_scale * (1 - 0.0025 * (attrs.age - 50)) * (1 - 0.11 * _stage(attrs.diagnosis))


def cortex_thickness_mm(attrs: BrainAttributes) -> float:
    """Exaggerated (real: about 2.5 mm) so that the ribbon shows at 3 mm voxels."""
    return 4.8 - 0.014 * attrs.age


def sulcus_width(exo: BrainExogenous, attrs: BrainAttributes) -> float:
    return exo.sulcus_base * math.exp(0.012 * (attrs.age - 50))


def brain_margin_mm(attrs: BrainAttributes) -> float:
    """CSF between the skull and the brain surface (global atrophy)."""
    return 2.0 + 0.05 * attrs.age


def head_axes(exo: BrainExogenous, attrs: BrainAttributes) -> tuple[float, float, float]:
    f = 1.0 if attrs.sex == "M" else 0.93
    return tuple(a * f for a in exo.head)


# --- rendering -----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _fold_field(seed: int, size: int, spacing: float) -> np.ndarray:
    """Band-limited noise in mm space (resolution independent): the cortical folding pattern.
    Cached: a subject's factual and counterfactuals share it."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((FOLD_GRID,) * 3).astype(np.float32)
    half = (FOLD_GRID - 1) / 2
    coords = [v.ravel() / FOLD_SPACING_MM + half for v in grid_mm(size, spacing)]
    f = map_coordinates(coarse, coords, order=3, mode="nearest").reshape((size,) * 3) / 1.2
    f.setflags(write=False)
    return f


def lesion_centres(exo: BrainExogenous, attrs: BrainAttributes) -> list[tuple[np.ndarray, float, float]]:
    """(centre mm, radius mm, elongation) of each lesion drawn for this lesion load.

    More load: more of the subject's sites are used (in u's order) and the total volume equals
    the load, so lesion volume is monotone in the load."""
    load = attrs.lesion_load
    if load <= 0:
        return []
    count = min(LESION_SITES, max(1, math.ceil(load / 1.2)))
    vol_mm3 = load * 1000.0 / count
    vs = ventricle_scale(attrs)
    vx, vy, vz = (s * vs for s in exo.vent_shape)
    out = []
    for az, h, off, elong in exo.lesion_sites[:count]:
        side = 1 if math.cos(az) >= 0 else -1
        cx = exo.centre[0] + side * (exo.vent_sep + vx + off)
        cy = exo.centre[1] + math.sin(az) * vy * 0.8
        cz = exo.centre[2] + 10.0 + h * vz + math.copysign(2.0, h) * (off / 3)
        r = (3 * vol_mm3 / (4 * math.pi * elong)) ** (1 / 3)
        out.append((np.array([cx, cy, cz], dtype=np.float32), r, elong))
    return out


def tissue_maps(exo: BrainExogenous, attrs: BrainAttributes, size: int = 64, spacing: float = 3.0) -> dict[str, np.ndarray]:
    """Soft (partial-volume) maps of each tissue class on the grid, each in [0, 1]."""
    x, y, z = grid_mm(size, spacing)
    edge = 0.35 * spacing
    c = exo.centre
    hx, hy, hz = head_axes(exo, attrs)
    head = _soft(_ellipsoid_sd(x, y, z, c, (hx + 7, hy + 7, hz + 7)), edge)
    skull_out = _soft(_ellipsoid_sd(x, y, z, c, (hx + 1.5, hy + 1.5, hz + 1.5)), edge)
    icv = _soft(_ellipsoid_sd(x, y, z, c, (hx - 3, hy - 3, hz - 3)), edge)
    # brain surface: the intracranial ellipsoid less a CSF margin
    m = 3 + brain_margin_mm(attrs)
    pial_sd = _ellipsoid_sd(x, y, z, c, (hx - m, hy - m, hz - m))
    depth = -pial_sd
    fold = _fold_field(exo.seed, size, float(spacing))
    w = sulcus_width(exo, attrs)
    cortical_zone = _soft(depth - 22.0, 3.0)
    sulci = _soft(np.abs(fold) - w, 0.02) * cortical_zone
    brain = _soft(pial_sd, edge) * (1 - sulci)
    # white matter lies deeper than the cortical ribbon, measured from the surface and the sulci
    to_sulcus = np.maximum(np.abs(fold) - w, 0) * 10.0 + (1 - cortical_zone) * 50.0
    wm_depth = np.minimum(depth, to_sulcus)
    wm = _soft(cortex_thickness_mm(attrs) - wm_depth, edge) * brain
    # deep grey matter (thalami, basal ganglia) and the lateral ventricles
    deep = np.zeros_like(x)
    for s in (-1, 1):
        deep = np.maximum(deep, _soft(_ellipsoid_sd(x, y, z, (c[0] + s * 12, c[1] - 4, c[2] + 2), (7, 11, 8)), edge))
    vs = ventricle_scale(attrs)
    vx, vy, vz = (r * vs for r in exo.vent_shape)
    vent = np.zeros_like(x)
    for s in (-1, 1):
        cx = c[0] + s * (exo.vent_sep + vx * 0.6)
        body = _ellipsoid_sd(x, y, z, (cx, c[1], c[2] + 10), (vx, vy, vz))
        horn = _ellipsoid_sd(x, y, z, (cx - s * 1.0, c[1] + vy * 0.7, c[2] + 4), (vx * 0.9, vy * 0.45, vz * 1.1))
        vent = np.maximum(vent, _soft(np.minimum(body, horn), edge))
    # hippocampi inside a fixed temporal-horn envelope: atrophy leaves CSF behind
    hs = hippocampus_scale(exo, attrs)
    hippo = np.zeros_like(x)
    horn_csf = np.zeros_like(x)
    for s in (-1, 1):
        hc = (c[0] + s * 27, c[1] - 18, c[2] - 14)
        horn_csf = np.maximum(horn_csf, _soft(_ellipsoid_sd(x, y, z, hc, (6.5, 19.5, 7.0)), edge))
        hippo = np.maximum(hippo, _soft(_ellipsoid_sd(x, y, z, hc, (5.5 * hs, 17.0 * hs, 6.0 * hs)), edge))
    lesions = np.zeros_like(x)
    for centre, r, elong in lesion_centres(exo, attrs):
        sd = _ellipsoid_sd(x, y, z, centre, (r, r, r * elong))
        lesions = np.maximum(lesions, _soft(sd, edge))
    lesions = lesions * wm * (1 - vent)
    return {"head": head, "skull_out": skull_out, "icv": icv, "brain": brain, "wm": wm, "deep": deep * brain,
            "ventricles": vent * brain, "hippocampus": hippo * horn_csf, "temporal_horn": horn_csf * brain,
            "lesions": lesions}


def compose(maps: dict[str, np.ndarray]) -> np.ndarray:
    """The noise-free T1 volume from the tissue maps (later maps paint over earlier ones)."""
    img = maps["head"] * SCALP
    img = img * (1 - maps["skull_out"]) + maps["skull_out"] * SKULL
    img = img * (1 - maps["icv"]) + maps["icv"] * CSF
    b = maps["brain"]
    img = img * (1 - b) + b * GM
    img = img * (1 - maps["wm"]) + maps["wm"] * WM
    img = img * (1 - maps["deep"]) + maps["deep"] * DEEP_GM
    img = img * (1 - maps["temporal_horn"]) + maps["temporal_horn"] * CSF
    img = img * (1 - maps["hippocampus"]) + maps["hippocampus"] * GM
    img = img * (1 - maps["ventricles"]) + maps["ventricles"] * CSF
    img = img * (1 - maps["lesions"]) + maps["lesions"] * LESION
    return img.astype(np.float32)


def render_clean(exo: BrainExogenous, attrs: BrainAttributes, size: int = 64, spacing: float = 3.0) -> np.ndarray:
    return compose(tissue_maps(exo, attrs, size, spacing))


def acquire(clean: np.ndarray, exo: BrainExogenous, spacing: float = 3.0, noise_seed: int | None = None) -> np.ndarray:
    """Bias field, gain and Rician noise: all from u, so a counterfactual shares them
    (``noise_seed``: the same bias field and gain, another noise realisation)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(exo.seed + 1)
    coarse = rng.standard_normal((4, 4, 4)).astype(np.float32)
    bias = np.exp(0.08 * zoom(coarse, [s / 4 for s in clean.shape], order=3)[: clean.shape[0], : clean.shape[1], : clean.shape[2]])
    img = clean * bias * exo.gain
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    n1 = rng.standard_normal(clean.shape).astype(np.float32)
    n2 = rng.standard_normal(clean.shape).astype(np.float32)
    img = np.sqrt((img + exo.noise_sigma * n1) ** 2 + (exo.noise_sigma * n2) ** 2)
    return np.clip(img, 0, 1).astype(np.float32)


def ideal_edit(factual: np.ndarray, clean_alt: np.ndarray, exo: BrainExogenous, region: np.ndarray,
               spacing: float = 3.0) -> np.ndarray:
    """The floor of any editor: the true noise-free change with the subject's bias field and gain
    but an independent noise realisation inside ``region``; the factual volume outside it."""
    fresh = acquire(clean_alt, exo, spacing, noise_seed=exo.seed + 2)
    return np.where(region, fresh, factual).astype(np.float32)


def render(exo: BrainExogenous, attrs: BrainAttributes, size: int = 64, spacing: float = 3.0) -> np.ndarray:
    return acquire(render_clean(exo, attrs, size, spacing), exo, spacing)


def mask_between(clean_a: np.ndarray, clean_b: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    """Where two noise-free volumes differ: the region an edit should change."""
    return np.abs(clean_a - clean_b) > threshold


def measurements(maps: dict[str, np.ndarray], spacing: float) -> dict[str, float]:
    """Ground-truth volumes (mL) and the like, from the partial-volume maps."""
    ml = spacing ** 3 / 1000.0
    return {"icv_ml": float(maps["icv"].sum() * ml), "brain_ml": float(maps["brain"].sum() * ml),
            "ventricle_ml": float(maps["ventricles"].sum() * ml),
            "hippocampus_ml": float(maps["hippocampus"].sum() * ml),
            "lesion_ml": float(maps["lesions"].sum() * ml)}


# structures `cfgen phantoms brain --anatomy` can write as label maps (tissue_maps keys)
ANATOMY = ("icv", "brain", "wm", "deep", "ventricles", "hippocampus", "lesions")


def check_anatomy(names) -> tuple[str, ...]:
    """The structure names as a tuple; ValueError naming the first unknown or repeated one."""
    names = tuple(names)
    bad = [a for a in names if a not in ANATOMY] or [a for a in names if names.count(a) > 1]
    if bad:
        raise ValueError(f"'{bad[0]}' is unknown or repeated (known: {', '.join(ANATOMY)})")
    return names


def anatomy_labels(maps: dict[str, np.ndarray], names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Integer label map (uint8): value k where the k-th named structure covers at least half the
    voxel (partial volume >= 0.5); later names paint over earlier ones, 0 elsewhere."""
    out = np.zeros(maps["head"].shape, np.uint8)
    for k, name in enumerate(names, start=1):
        out[maps[name] >= 0.5] = k
    return out


def counterfactual_attributes(exo: BrainExogenous, attrs: BrainAttributes) -> dict[str, BrainAttributes]:
    """The single-attribute counterfactuals written for every subject (any other can be rendered):
    age +-30 years (towards the middle of life), the other sex, CN <-> AD (MCI -> CN), lesions
    removed or added (u's load)."""
    return {
        "age": attrs.with_value("age", attrs.age + 30 if attrs.age < 55 else attrs.age - 30),
        "sex": attrs.with_value("sex", "M" if attrs.sex == "F" else "F"),
        "diagnosis": attrs.with_value("diagnosis", "AD" if attrs.diagnosis == "CN" else "CN"),
        "lesion_load": attrs.with_value("lesion_load", 0.0 if attrs.lesion_load > 0 else exo.lesion_alt_load),
    }


def labels_row(attrs: BrainAttributes, meas: dict[str, float]) -> dict[str, str]:
    return {"Age": f"{attrs.age:g}", "Sex": attrs.sex, "Diagnosis": attrs.diagnosis,
            "lesion_load": f"{attrs.lesion_load:g}", "MS": "1" if attrs.lesion_load > 0 else "0",
            **{k: f"{v:.2f}" for k, v in meas.items()}}


def exogenous_dict(exo: BrainExogenous) -> dict:
    return asdict(exo)
