"""A fixed intensity window with a knee (LOW,KNEE,HIGH): piecewise linear, exactly invertible,
checked before any work, and carried between a base stage and a super-resolution stage with
different windows."""
from __future__ import annotations

import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from cfgen.errors import UsageError
from cfgen.io.intensity import check_window, choose_window, window_map

HU = np.array([-2000.0, -1024.0, -1000.0, -950.0, -860.0, -700.0, -500.0, 0.0, 40.0, 600.0, 1500.0], dtype=np.float32)


def test_a_knee_window_is_numpys_piecewise_linear_map_and_its_inverse():
    m = choose_window(HU, "int16", "-1024,-700,600", (-1.0, 1.0))
    ref = np.interp(HU, [-1024.0, -700.0, 600.0], [-1.0, 0.0, 1.0])  # independent: numpy's interpolation
    assert np.allclose(m.to_model(HU), ref, atol=1e-6)
    y = np.linspace(-1.0, 1.0, 101, dtype=np.float32)
    assert np.allclose(m.from_model(y), np.interp(y, [-1.0, 0.0, 1.0], [-1024.0, -700.0, 600.0]), atol=1e-3)
    inside = HU[(HU >= -1024) & (HU <= 600)]
    assert np.allclose(m.from_model(m.to_model(inside)), inside, atol=1e-3)
    # the lungs' 324 HU get half the model's range: a model error of 0.01 costs 3.2 HU there (8.1 in the
    # linear -1024,600 window), 6.5 above the knee
    assert m.from_model(np.float32(-0.5)) - m.from_model(np.float32(-0.51)) == pytest.approx(3.24, abs=0.01)
    linear = window_map("-1024,600", (-1.0, 1.0))
    assert linear.knee is None and np.allclose(linear.to_model(inside), np.interp(inside, [-1024, 600], [-1, 1]))


@pytest.mark.parametrize("window, message", [("-1024,700,600", "KNEE must lie between LOW and HIGH"),
                                             ("600,-700,-1024", "HIGH must be above LOW"),
                                             ("-1024,-900,-700,600", "LOW,KNEE,HIGH")])
def test_bad_knee_windows_are_one_line_errors(window, message):
    with pytest.raises(UsageError, match=message):
        check_window(window)


def test_edit_refuses_a_bad_knee_with_a_one_line_error(cli, tmp_path):
    scan = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), -860, np.int16), np.eye(4)), scan)
    res = cli("edit", scan, "-p", "x", "-m", "demo-brain", "--window", "-1024,700,600", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "KNEE must lie between LOW and HIGH" in res.output, res.output


def test_a_volume_crosses_between_stages_of_different_windows_in_hu():
    """synth3d hands a base with a knee to a linear super-resolution stage in the stage's own units."""
    from cfgen.synthesis.generate import _between

    base = SimpleNamespace(defaults={"window": "-1024,-700,600"}, value_range=(-1.0, 1.0))
    sr = SimpleNamespace(defaults={"window": "-1024,600"}, value_range=(-1.0, 1.0))
    x = torch.linspace(-1.0, 1.0, 64).reshape(1, 1, 4, 4, 4)
    y = _between(x, base, sr)
    hu = np.interp(x.numpy(), [-1.0, 0.0, 1.0], [-1024.0, -700.0, 600.0])
    assert np.allclose(np.interp(y.numpy(), [-1.0, 1.0], [-1024.0, 600.0]), hu, atol=1e-2)
    assert np.allclose(_between(y, sr, base).numpy(), x.numpy(), atol=1e-5)
    assert _between(x, base, base) is x


def test_synth3d_writes_hu_through_a_knee_window(cli, tmp_path):
    """The same weights and seed with a linear and a knee window give the same model-space volume,
    so the two written HU volumes differ by exactly the two maps (numpy's interpolation)."""
    import shutil

    from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
    from cfgen.models.tabular import CT_FIELDS

    linear = build_ldm3d(tmp_path / "linear", LDM3DSpec(resolution=8, ae_channels=None, unet_channels=(8, 16),
                                                        conditioning=CT_FIELDS, window="-1024,600",
                                                        synth={"spacing": 48.0}), seed=4)
    knee = shutil.copytree(linear, tmp_path / "knee")
    toml = knee / "cfgen.toml"
    toml.write_text(toml.read_text().replace('window = "-1024,600"', 'window = "-1024,-700,600"'))
    written = {}
    for folder in (linear, knee):
        out = tmp_path / f"gen-{folder.name}"
        res = cli("synth3d", "-p", "CT with a large right pleural effusion", "-m", folder, "--steps", "2",
                  "--sr", "none", "--device", "cpu", "-q", "-o", out)
        assert res.exit_code == 0, res.output
        img = nib.load(out / "sample-000" / "volume.nii.gz")
        assert img.get_data_dtype() == np.int16
        written[folder.name] = np.asarray(img.dataobj).astype(np.float64)
        units = json.loads((out / "report.json").read_text())["params"]["units"]
        assert units == f"window {'-1024,600' if folder == linear else '-1024,-700,600'} (int16)"
    unit = np.interp(written["linear"], [-1024.0, 600.0], [0.0, 1.0])
    expected = np.interp(unit, [0.0, 0.5, 1.0], [-1024.0, -700.0, 600.0])
    assert written["linear"].std() > 0 and np.abs(written["knee"] - expected).max() <= 3.0


def test_difference_figures_count_hu_through_the_knee():
    """The edit's difference map in HU: through the window's own map, not the window's width times
    the change in model range (which a knee makes wrong by up to 2.5x in the lungs)."""
    from cfgen.editing.operations import _difference
    from cfgen.viz.style import units_for

    w = window_map("-1024,-700,600", (-1.0, 1.0))
    before = np.array([[-950.0, -860.0, 0.0]], dtype=np.float32)  # emphysema, lung, soft tissue
    after = np.array([[-860.0, -700.0, 40.0]], dtype=np.float32)
    u = lambda hu: (w.to_model(hu) + 1.0) / 2.0  # noqa: E731  [0, 1] through the window, as the figures see it
    got = _difference(w, u(before), u(after), units_for("HU", w.low, w.high))
    assert np.allclose(got, after - before, atol=0.1)
    linear = window_map("-1024,600", (-1.0, 1.0))
    ul = lambda hu: (linear.to_model(hu) + 1.0) / 2.0  # noqa: E731
    assert np.allclose(_difference(linear, ul(before), ul(after), units_for("HU", -1024, 600)), after - before, atol=0.1)


def test_refine_counts_its_change_in_hu_through_a_knee():
    """--refine-change is a fraction of the window's width in scan units: the same HU in the lungs and
    above the knee, and for a linear window the plain model-range fraction it always was."""
    from cfgen.editing.masks import refined_mask
    from cfgen.editing.prepare import unit, window_fraction

    hu_before = np.full((1, 1, 8, 8), -860.0, dtype=np.float32)
    hu_before[..., 4:] = 40.0  # left half lung, right half soft tissue
    hu_after = hu_before + 300.0  # the same 300 HU change everywhere (0.185 of the 1624 HU width)
    for window in ("-1024,-700,600", "-1024,600"):
        w = window_map(window, (-1.0, 1.0))
        prep = SimpleNamespace(window=w)
        a, b = (window_fraction(torch.from_numpy(w.to_model(h)), prep) for h in (hu_before, hu_after))
        assert np.allclose((b - a).numpy(), 300.0 / 1624.0, atol=1e-4)
        keep = refined_mask(torch.ones(1, 1, 8, 8), a, b, 0.15)
        assert float(keep.min()) > 0.99  # kept on both sides of the knee alike
    # the model-range fraction would have counted the lungs' 300 HU (across the knee) as 0.30 and soft tissue's as 0.12
    knee = window_map("-1024,-700,600", (-1.0, 1.0))
    a, b = (unit(torch.from_numpy(knee.to_model(h)), (-1.0, 1.0)) for h in (hu_before, hu_after))
    raw = b - a
    assert float(raw[..., :4].mean()) > 0.29 and float(raw[..., 4:].mean()) < 0.13
