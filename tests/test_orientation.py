"""Volumes reach a 3D model in its orientation and voxel spacing (cfgen/editing/grid.py) and come
back on their own grid. The reference for every reoriented copy is nibabel's own ``as_reoriented``
and ``as_closest_canonical``; the thick-slice copy is made by averaging slice pairs."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, ornt_transform

from cfgen.editing.grid import ModelGrid
from cfgen.editing.prepare import to_model
from cfgen.errors import ModelError
from cfgen.io.scan import read_scan
from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
from cfgen.models.registry import _entry_from_table

DEMO = Path(__file__).resolve().parents[1] / "examples" / "brain_demo.nii.gz"  # 64^3 x 3 mm, RAS
EDIT = ["-p", "Brain MRI of a 80 year old", "--source-prompt", "Brain MRI", "--mask", "none", "--steps", "2",
        "--window", "0,1", "--seed", "3", "-q"]
#: 32^3 x 6 mm: the demo volume's field of view (192 mm) at half its resolution
GRID = ModelGrid(resolution=32, dims=3, orientation="RAS", spacing=(6.0, 6.0, 6.0))


@pytest.fixture(scope="module")
def model6mm(tmp_path_factory):
    return build_ldm3d(tmp_path_factory.mktemp("models") / "voxel6mm",
                       LDM3DSpec(resolution=32, ae_channels=None, spacing=6.0), seed=4)


def _copy(tmp: Path, codes: str) -> Path:
    img = nib.load(DEMO)
    moved = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(codes))))
    assert "".join(nib.aff2axcodes(moved.affine)) == codes
    path = tmp / f"brain_{codes}.nii.gz"
    nib.save(moved, path)
    return path


def _thick(tmp: Path) -> Path:
    """6 mm slices: each pair of 3 mm slices averaged, the affine's z column doubled, the origin at
    the pair's centre."""
    img = nib.load(DEMO)
    data = img.get_fdata(dtype=np.float32)
    thick = 0.5 * (data[:, :, 0::2] + data[:, :, 1::2])
    aff = img.affine.copy()
    aff[:3, 3] += 0.5 * aff[:3, 2]
    aff[:3, 2] *= 2
    path = tmp / "brain_6mm.nii.gz"
    nib.save(nib.Nifti1Image(thick, aff), path)
    return path


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PIR"])
def test_reoriented_copy_reaches_the_model_unchanged(tmp_path, codes):
    ras = to_model(read_scan(DEMO), GRID, 1, (-1.0, 1.0), "0,1")
    other = to_model(read_scan(_copy(tmp_path, codes)), GRID, 1, (-1.0, 1.0), "0,1")
    assert other.record()["orientation"] == codes
    # equal up to the int16 rounding of the saved copy (nibabel picks its own scale factor)
    assert np.abs(other.x.numpy() - ras.x.numpy()).max() < 1e-4


def test_edit_of_an_las_copy_equals_the_ras_edit(cli, model6mm, tmp_path):
    outs = {}
    for codes in ("RAS", "LAS", "LPS"):
        src = DEMO if codes == "RAS" else _copy(tmp_path, codes)
        res = cli("edit", src, "-m", model6mm, "-o", tmp_path / codes, *EDIT)
        assert res.exit_code == 0, res.output
        (cf,) = (tmp_path / codes).glob("*/counterfactual.nii.gz")
        out, inp = nib.load(cf), nib.load(src)
        # the output keeps the input's grid: shape, affine and on-disk type
        assert out.shape == inp.shape and np.allclose(out.affine, inp.affine)
        assert out.get_data_dtype() == inp.get_data_dtype()
        outs[codes] = nib.as_closest_canonical(out).get_fdata()
    quantum = float(nib.load(DEMO).dataobj.slope)
    assert np.abs(outs["RAS"] - nib.load(DEMO).get_fdata()).max() > 100 * quantum  # the edit changed something
    for codes in ("LAS", "LPS"):
        assert np.abs(outs[codes] - outs["RAS"]).max() <= 1.01 * quantum, codes


def test_thick_slices_fill_the_model_grid(tmp_path):
    demo = to_model(read_scan(DEMO), GRID, 1, (-1.0, 1.0), "0,1")
    thick = to_model(read_scan(_thick(tmp_path)), GRID, 1, (-1.0, 1.0), "0,1")
    assert thick.record()["spacing"] == [3.0, 3.0, 6.0] and thick.record()["resized"] == [32, 32, 32]
    a, b = demo.x.numpy()[0, 0], thick.x.numpy()[0, 0]
    filled = lambda v: int(((v > -0.99).any(axis=(0, 1))).sum())  # noqa: E731  z slices with anatomy
    assert filled(b) == filled(a) > 24
    # resampling 3 mm to 6 mm averages slice pairs, as the thick copy was made: equal up to rounding
    assert np.abs(a - b).max() < 1e-4


def test_edit_of_a_thick_slice_copy_keeps_its_grid(cli, model6mm, tmp_path):
    src = _thick(tmp_path)
    outs = {}
    for name, path in (("thin", DEMO), ("thick", src)):
        res = cli("edit", path, "-m", model6mm, "-o", tmp_path / name, *EDIT)
        assert res.exit_code == 0, res.output
        (cf,) = (tmp_path / name).glob("*/counterfactual.nii*")
        outs[name] = nib.load(cf)
    thick, thin = outs["thick"], outs["thin"].get_fdata()
    assert thick.shape == (64, 64, 32) and np.allclose(thick.affine, nib.load(src).affine)
    # the thin edit averaged over slice pairs: the thick edit, up to the interpolation of the way back
    pairs = 0.5 * (thin[:, :, 0::2] + thin[:, :, 1::2])
    change = np.abs(thin - nib.load(DEMO).get_fdata()).mean()
    assert np.abs(thick.get_fdata() - pairs).mean() < 0.25 * change


def test_large_field_of_view_is_scaled_to_fit_and_recorded(tmp_path):
    img = nib.load(DEMO)
    aff = img.affine.copy()
    aff[:3, :3] *= 2  # 6 mm voxels: 384 mm, twice the model's 192 mm cube
    path = tmp_path / "wide.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), aff), path)
    rec = to_model(read_scan(path), GRID, 1, (-1.0, 1.0), "0,1").record()
    assert rec["scaled_to_fit"] == 0.5 and rec["model_spacing"] == [12.0, 12.0, 12.0]


def test_oblique_volume_records_its_obliquity(tmp_path):
    img = nib.load(DEMO)
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata(dtype=np.float32), rot @ img.affine), path)
    rec = to_model(read_scan(path), GRID, 1, (-1.0, 1.0), "0,1").record()
    assert rec["orientation"] == "RAS" and abs(rec["obliquity_deg"] - 20.0) < 0.01


@pytest.mark.parametrize("table, problem", [({"orientation": "RAR"}, "orientation"),
                                            ({"orientation": "RASX"}, "orientation"),
                                            ({"spacing": -1}, "spacing"), ({"spacing": [1, 2]}, "spacing"),
                                            ({"spacing": "3mm"}, "spacing")])
def test_bad_voxel_geometry_in_a_model_table_is_refused(tmp_path, table, problem):
    full = {"family": "latent-diffusion-3d", "source": {"kind": "local", "path": "m"}, **table}
    with pytest.raises(ModelError, match=problem) as info:
        _entry_from_table("m", full, tmp_path / "models.toml")
    assert "\n" not in str(info.value)


def test_finetuned_3d_folders_keep_the_voxel_geometry(model6mm):
    import tomllib

    from cfgen.models.loader import entry_for
    from cfgen.training.export import model_toml

    e = entry_for(str(model6mm))
    assert (e.orientation, e.spacing) == ("RAS", (6.0, 6.0, 6.0))
    again = _entry_from_table("m", {**tomllib.loads(model_toml(e)), "source": {"kind": "local", "path": "m"}},
                              Path("x.toml"))
    assert (again.orientation, again.spacing) == ("RAS", (6.0, 6.0, 6.0))


def test_panel_views_do_not_depend_on_the_voxel_order_and_go_through_the_change(tmp_path):
    from cfgen.viz.figures import volume_views

    ras = nib.load(DEMO)
    las = nib.load(_copy(tmp_path, "LAS"))
    a_ras = ras.get_fdata(dtype=np.float32)
    b_ras = a_ras.copy()
    b_ras[40:44, 20:24, 30:34] += 0.5  # a change right (x 40-43 of 64), posterior, at mid height
    flip = lambda v: v[::-1]  # noqa: E731  RAS -> LAS: the first axis reversed
    s1 = volume_views(a_ras, b_ras, ras.affine)
    s2 = volume_views(flip(a_ras), flip(b_ras), las.affine)
    assert np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
    views = {v["name"]: v for v in s1[2]["views"]}
    assert (views["sagittal"]["slice"], views["coronal"]["slice"], views["axial"]["slice"]) == (42, 22, 32)
    assert views["axial"]["letters"] == ("R", "L", "A", "P")
    # radiological: the change on the patient's right lies in the left half of the axial view
    ax = views["axial"]
    diff = (s1[1] - s1[0])[:, ax["x0"]:ax["x1"]]
    cols = np.nonzero(diff.any(axis=0))[0]
    assert cols.max() < diff.shape[1] / 2
    assert volume_views(a_ras, b_ras, np.zeros((4, 4)))[2]["oriented"] is False
