"""`cfgen synth3d`: base stage (DDIM or rectified flow, optional anatomy channels), sliding-window
super-resolution, --mask-from, and training both stages through `cfgen finetune`."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from cfgen.errors import ModelError
from cfgen.models.ldm3d import LDM3DSpec, build_ldm3d
from schema import validate_report


def _liven(folder, seed=0):
    """MONAI zero-initialises the UNet's output layer: give the untrained net a real output."""
    from safetensors.torch import load_file, save_file

    path = folder / "unet" / "model.safetensors"
    sd = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for k, v in sd.items():
        if k.startswith("out."):
            sd[k] = torch.randn(v.shape, generator=g) * 0.05
    save_file(sd, str(path))
    return folder


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    sr = _liven(build_ldm3d(root / "sr", LDM3DSpec(resolution=16, ae_channels=None, unet_channels=(8, 16),
                                                   synth={"scale": 2, "patch": 8, "overlap": 0.5}), seed=1))
    base = _liven(build_ldm3d(root / "base", LDM3DSpec(
        resolution=8, ae_channels=None, unet_channels=(8, 16),
        synth={"spacing": 4.0, "labels": ["ventricles"], "super_resolution": "../sr"}), seed=2))
    flow = _liven(build_ldm3d(root / "flow", LDM3DSpec(resolution=8, ae_channels=None, unet_channels=(8, 16),
                                                       scheduler="rflow", synth={"spacing": 4.0}), seed=3))
    return {"base": base, "sr": sr, "flow": flow}


def _cube(side=8):
    lab = np.zeros((side,) * 3, np.uint8)
    lab[2:6, 3:6, 2:5] = 1
    return lab


def test_synth3d_writes_volumes_of_the_requested_shape_with_the_models_spacing(stages, cli, tmp_path):
    args = ["synth3d", "--prompt", "brain MRI, high lesion load", "-m", stages["base"], "-n", "2", "--steps", "3",
            "--sr-steps", "2", "--device", "cpu", "-q"]
    assert cli(*args, "-o", tmp_path / "a").exit_code == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    validate_report(report)
    assert report["params"]["sr"] == "sr" and report["params"]["labels"] == ["ventricles"]
    assert [it["status"] for it in report["items"]] == ["ok", "ok"]
    vols = []
    for it in report["items"]:
        img = nib.load(tmp_path / "a" / it["outputs"]["volume"])
        # base 8^3 x 4 mm (32 mm field of view) -> x2 -> 16^3 x 2 mm, centred RAS affine
        assert img.shape == (16, 16, 16) and np.allclose(img.header.get_zooms(), 2.0)
        assert np.allclose(img.affine[:3, 3], -7.5 * 2.0) and int(img.header["sform_code"]) == 1
        assert b"SYNTHETIC" in img.header["descrip"].tobytes()
        base = nib.load(tmp_path / "a" / it["outputs"]["base"])
        assert base.shape == (8, 8, 8) and np.allclose(base.header.get_zooms(), 4.0)
        lab = nib.load(tmp_path / "a" / it["outputs"]["labels"])
        assert lab.shape == (16, 16, 16) and lab.get_data_dtype() == np.uint8
        assert it["metrics"]["ventricles_ml"] == pytest.approx((np.asarray(lab.dataobj) == 1).sum() * 0.008)
        vols.append(img.get_fdata())
        assert 0 <= vols[-1].min() and vols[-1].max() <= 1 + 1e-6 and vols[-1].std() > 0  # int16 x scale
    assert not np.allclose(vols[0], vols[1])  # seeds 0 and 1
    # same seed, same volume; a requested size keeps the field of view
    assert cli(*args, "-n", "1", "--size", "24", "-o", tmp_path / "b").exit_code == 0
    again = nib.load(tmp_path / "b" / "sample-000" / "volume.nii.gz")
    assert again.shape == (24, 24, 24) and np.allclose(again.header.get_zooms(), 32 / 24)
    assert cli(*args, "-n", "1", "-o", tmp_path / "c").exit_code == 0
    assert np.array_equal(nib.load(tmp_path / "c" / "sample-000" / "volume.nii.gz").get_fdata(), vols[0])
    # resumed: both samples found done
    assert cli(*args, "-o", tmp_path / "a").exit_code == 0
    assert json.loads((tmp_path / "a" / "report.json").read_text())["summary"]["skipped"] == 2


def test_rectified_flow_and_ddim_sample_through_the_same_command(stages, cli, tmp_path):
    for name, kind in (("flow", "rflow"), ("base", "ddim")):
        res = cli("synth3d", "-p", "brain MRI", "-m", stages[name], "--sr", "none", "--steps", "4", "--device", "cpu",
                  "-q", "-o", tmp_path / name)
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["params"]["scheduler"] == kind and report["params"]["sr"] is None
        img = nib.load(tmp_path / name / "sample-000" / "volume.nii.gz")
        assert img.shape == (8, 8, 8) and np.allclose(img.header.get_zooms(), 4.0)
        assert img.get_fdata().std() > 0


def test_sliding_window_super_resolution_equals_the_whole_volume(stages):
    from cfgen.models.loader import load_model
    from cfgen.synthesis.superres import WindowedUNet, super_resolve

    sr = load_model(str(stages["sr"]), device="cpu")
    g = torch.Generator().manual_seed(0)
    low = torch.randn(1, 1, 16, 16, 16, generator=g)
    z = torch.randn(1, 1, 16, 16, 16, generator=g)
    direct = sr.unet(torch.cat([z, low], 1), 500).sample
    one = WindowedUNet(sr.unet, low, 16, 0.25)(z, 500).sample  # one window: the stitching is exact
    assert torch.allclose(one, direct, atol=1e-5)
    tiled = WindowedUNet(sr.unet, low, 8, 0.5)(z, 500).sample  # 27 overlapping 8^3 windows
    # close, not bit-equal: GroupNorm statistics are per window
    assert (tiled - direct).abs().mean() < 0.1 * direct.abs().mean()
    # a whole sampling run: windows of the volume's size reproduce the whole-volume run
    a = super_resolve(sr, low[:, :, ::2, ::2, ::2], 16, 3, seed=0, patch=16)
    b = super_resolve(sr, low[:, :, ::2, ::2, ::2], 16, 3, seed=0, patch=32)
    assert torch.allclose(a, b, atol=1e-5)


def test_mask_from_fixes_the_anatomy_and_generates_the_image_around_it(stages, cli, tmp_path):
    cube = _cube()
    nib.save(nib.Nifti1Image(cube, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "anatomy.nii.gz")
    shifted = np.roll(cube, 2, axis=0)
    nib.save(nib.Nifti1Image(shifted, np.diag([4.0, 4.0, 4.0, 1.0])), tmp_path / "shifted.nii.gz")
    args = ["synth3d", "-p", "brain MRI", "-m", stages["base"], "--steps", "3", "--sr-steps", "2", "--device", "cpu", "-q"]
    out = {}
    for name in ("anatomy", "shifted"):
        assert cli(*args, "--mask-from", tmp_path / f"{name}.nii.gz", "-o", tmp_path / name).exit_code == 0
        out[name] = tmp_path / name / "sample-000"
    assert cli(*args, "-o", tmp_path / "free").exit_code == 0
    up = cube.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    got = np.asarray(nib.load(out["anatomy"] / "labels.nii.gz").dataobj)
    assert np.array_equal(got, up)  # the given anatomy, at the output grid
    free = np.asarray(nib.load(tmp_path / "free" / "sample-000" / "labels.nii.gz").dataobj)
    assert not np.array_equal(free, up)
    # same seed, other anatomy: the image channels were generated around it
    a = nib.load(out["anatomy"] / "base.nii.gz").get_fdata()
    b = nib.load(out["shifted"] / "base.nii.gz").get_fdata()
    assert np.abs(a - b).max() > 1e-3
    res = cli("synth3d", "-p", "x", "-m", stages["flow"], "--mask-from", tmp_path / "anatomy.nii.gz", "-o",
              tmp_path / "no", "--device", "cpu", "-q")
    assert res.exit_code == 2 and "generates no anatomy label channels" in res.output


def _phantoms(folder, n=4):
    from cfgen.phantoms.brain_dataset import write_brain_dataset

    write_brain_dataset(folder, n, seed=5, size=16, spacing=12.0)
    return folder / "labels.csv"


def test_finetune_trains_the_super_resolution_stage_and_resumes(stages, cli, tmp_path):
    import shutil

    csv = _phantoms(tmp_path / "ph")
    model = shutil.copytree(stages["sr"], tmp_path / "sr")
    args = ["finetune", csv, "-m", model, "--batch-size", "2", "--learning-rate", "1e-3", "--device", "cpu", "-q",
            "--checkpoint-every", "2", "-o", tmp_path / "run"]
    assert cli(*args, "--max-steps", "2").exit_code == 0
    res = cli(*args, "--max-steps", "3", "--resume")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["params"]["objective"] == {"kind": "super-resolution", "scale": 2, "patch": 8, "residual": False}
    assert report["training"]["start_step"] == 2 and report["training"]["final_step"] == 3
    assert np.isfinite(report["training"]["eval_loss_end"])
    # the trained stage keeps its role and serves synth3d
    assert "scale = 2" in (tmp_path / "run" / "model" / "cfgen.toml").read_text()
    res = cli("synth3d", "-p", "brain MRI", "-m", stages["base"], "--sr", tmp_path / "run" / "model", "--steps", "2",
              "--sr-steps", "2", "--device", "cpu", "-q", "-o", tmp_path / "gen")
    assert res.exit_code == 0, res.output
    assert nib.load(tmp_path / "gen" / "sample-000" / "volume.nii.gz").shape == (16, 16, 16)


def test_finetune_trains_a_base_stage_with_anatomy_channels(stages, cli, tmp_path):
    import csv as csvmod
    import shutil

    labels_csv = _phantoms(tmp_path / "ph")
    rows = list(csvmod.DictReader(labels_csv.open()))
    lines = ["image,caption,labels"]
    for i, r in enumerate(rows):
        img = nib.load(tmp_path / "ph" / r["Path"])
        lab = (img.get_fdata() > np.median(img.get_fdata())).astype(np.uint8)
        if i == 1:
            lab[0, 0, 0] = 7  # not a label of this model: the image is skipped, training goes on
        nib.save(nib.Nifti1Image(lab, img.affine), tmp_path / f"lab{i}.nii.gz")
        lines.append(f"ph/{r['Path']},brain MRI,lab{i}.nii.gz")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    model = shutil.copytree(stages["base"], tmp_path / "base")
    res = cli("finetune", tmp_path / "train.csv", "-m", model, "--batch-size", "2", "--max-steps", "2",
              "--device", "cpu", "-q", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert np.isfinite(report["training"]["eval_loss_end"])
    assert any("label values must be 0..1" in s["error"] for s in report["training"]["skipped_images"])
    (tmp_path / "nolab.csv").write_text("image,caption\n" + "\n".join(l.rsplit(",", 1)[0] for l in lines[1:]) + "\n")
    res = cli("finetune", tmp_path / "nolab.csv", "-m", model, "--max-steps", "1", "--device", "cpu", "-q",
              "-o", tmp_path / "run2")
    assert res.exit_code == 1 and "needs a 'labels' column" in res.output


def test_a_base_stages_synth_guidance_is_synth3ds_default(stages, cli, tmp_path):
    """[synth] guidance (demo-ct's calibrated 2.0) replaces [defaults] guidance for synth3d only: the
    volume is the one --guidance gives with the unchanged folder, and --guidance still wins."""
    import shutil

    from safetensors.torch import load_file, save_file

    plain = tmp_path / "flow1"
    shutil.copytree(stages["flow"], plain)
    weights = plain / "unet" / "model.safetensors"
    g = torch.Generator().manual_seed(5)
    save_file({k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in load_file(str(weights)).items()},
              str(weights))  # every layer live, so that the prompt and the guidance matter
    folder = tmp_path / "flow2"
    shutil.copytree(plain, folder)
    toml = folder / "cfgen.toml"
    text = toml.read_text()
    assert "[synth]\n" in text and "guidance" not in text.split("[synth]")[1]
    toml.write_text(text.replace("[synth]\n", "[synth]\nguidance = 1.0\n"))
    args = ["synth3d", "-p", "brain MRI", "--sr", "none", "--steps", "3", "--device", "cpu", "-q"]
    runs = {"own": [*args, "-m", folder], "given": [*args, "-m", plain, "--guidance", "1"],
            "default": [*args, "-m", plain], "override": [*args, "-m", folder, "--guidance", "7.5"]}
    vols = {}
    for name, a in runs.items():
        assert cli(*a, "-o", tmp_path / name).exit_code == 0
        vols[name] = nib.load(tmp_path / name / "sample-000" / "volume.nii.gz").get_fdata()
        vols[name + "_g"] = json.loads((tmp_path / name / "report.json").read_text())["params"]["guidance"]
    assert vols["own_g"] == 1.0 and vols["default_g"] == 7.5 and vols["override_g"] == 7.5
    assert np.array_equal(vols["own"], vols["given"]) and np.array_equal(vols["override"], vols["default"])
    assert not np.allclose(vols["own"], vols["default"])


def test_synth_tables_are_checked_when_the_registry_is_read(tmp_path):
    from cfgen.models.synth import check_synth_table

    assert check_synth_table({"scale": 2, "patch": 32}, "w") == {"scale": 2, "patch": 32}
    for bad, msg in (({"scal": 2}, "unknown"), ({"scale": 1}, "at least 2"), ({"scale": 2, "labels": ["a"]}, "no label"),
                     ({"labels": ["a", "a"]}, "distinct"), ({"overlap": 1.5}, "overlap"), ({"spacing": "3"}, "wrong type"),
                     ({"residual": True}, "super-resolution stage"), ({"scale": 2, "residual": 1}, "wrong type"),
                     ({"labels": ["a"], "label_encoding": "gray"}, "unknown"), ({"label_encoding": "bits"}, "needs labels"),
                     ({"guidance": 0.5}, "at least 1"), ({"scale": 2, "guidance": 2.0}, "base stage"),
                     ({"labels": ["a", "b"], "label_codes": [1, 4]}, "needs label_encoding"),
                     ({"labels": ["a", "b"], "label_encoding": "bits", "label_codes": [1]}, "2 distinct"),
                     ({"labels": ["a", "b"], "label_encoding": "bits", "label_codes": [4, 4]}, "2 distinct"),
                     ({"labels": ["a", "b"], "label_encoding": "bits", "label_codes": [0, 4]}, "1..255")):
        with pytest.raises(ModelError, match=msg):
            check_synth_table(bad, "w")


@pytest.mark.parametrize("count", [1, 2, 7, 8, 9, 15])
def test_label_codes_give_every_label_back_and_bits_take_log2_channels(count):
    """one-hot: one channel per label; bits: ceil(log2(count + 1)) channels (9 labels in 4); both
    decode every label and background exactly, also after a perturbation smaller than half the range,
    and bits decode a number no label has as background."""
    from cfgen.models.label_codes import decode, encode
    from cfgen.models.synth import label_channel_count

    rng = np.random.default_rng(count)
    codes = rng.integers(0, count + 1, size=(6, 5, 4))
    names = [f"l{k}" for k in range(count)]
    for enc, channels in (("one-hot", count), ("bits", int(np.ceil(np.log2(count + 1))))):
        assert label_channel_count({"labels": names, "label_encoding": enc}) == channels
        x = encode(codes, count, enc)
        assert x.shape == (channels,) + codes.shape and set(np.unique(x)) <= {0.0, 1.0}
        # in a model's range [-1, 1] with noise below the midpoint margin
        y = -1 + 2 * x + rng.uniform(-0.9, 0.9, x.shape)
        assert np.array_equal(decode(y, count, enc, 0.0), codes)
    assert label_channel_count({}) == 0
    if count < 2 ** count.bit_length() - 1:  # a code above count exists: it is not a label
        high = np.ones((count.bit_length(), 1))
        assert decode(high, count, "bits", 0.5)[0] == 0


def test_a_code_table_gives_a_label_a_bit_of_its_own_and_decodes_back():
    """[synth] label_codes: vessel (label 7) at code 16 sets channel 4 and nothing else; the other labels
    keep their bits; every label decodes back, and a number that is no label's code (7 now) is background."""
    from cfgen.models.label_codes import Encoding, channel_count, decode, encode
    from cfgen.models.synth import label_channel_count, label_encoding

    synth = {"labels": [f"l{k}" for k in range(9)], "label_encoding": "bits", "label_codes": [1, 2, 3, 4, 5, 6, 16, 8, 9]}
    enc = label_encoding(synth)
    assert enc == Encoding("bits", (1, 2, 3, 4, 5, 6, 16, 8, 9)) and label_channel_count(synth) == 5
    labels = np.arange(10).reshape(10, 1)
    x = encode(labels, 9, enc)[:, :, 0].T  # (label, bit)
    assert x[7].tolist() == [0, 0, 0, 0, 1] and x[:, 4].tolist() == [0] * 7 + [1, 0, 0]
    assert np.array_equal(x[[0, 1, 2, 3, 4, 5, 6, 8, 9], :4], encode(labels, 9, "bits")[:, [0, 1, 2, 3, 4, 5, 6, 8, 9], 0].T)
    assert np.array_equal(decode(2 * encode(labels, 9, enc) - 1, 9, enc, 0.0), labels)
    assert decode(np.array([1, 1, 1, 0, 0.0]).reshape(5, 1), 9, enc, 0.5)[0] == 0
    assert channel_count(9, Encoding("bits", (1, 2, 3, 4, 5, 6, 7, 8, 9))) == 4


def test_a_residual_stage_starts_from_trilinear_and_needs_x0_prediction(tmp_path):
    """[synth] residual: the UNet adds detail to the upsampled input, so the untrained stage (MONAI
    zero-initialises the output layer) gives back trilinear upsampling, windows and all."""
    from cfgen.models.loader import load_model
    from cfgen.synthesis.superres import super_resolve, upsample

    synth = {"scale": 2, "patch": 8, "overlap": 0.5, "residual": True}
    folder = build_ldm3d(tmp_path / "res", LDM3DSpec(resolution=16, ae_channels=None, unet_channels=(8, 16),
                                                      prediction_type="sample", synth=synth), seed=1)
    sr = load_model(str(folder), device="cpu")
    low = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = super_resolve(sr, low, 16, 4, seed=0)
    # the last DDIM step keeps sqrt(1 - alpha_bar_0) ~ 0.03 of the noise estimate
    assert (out - upsample(low, 16)).abs().max() < 0.15 and (out - upsample(low, 16)).abs().mean() < 0.03
    plain = build_ldm3d(tmp_path / "eps", LDM3DSpec(resolution=16, ae_channels=None, unet_channels=(8, 16),
                                                     synth=synth), seed=1)
    with pytest.raises(ModelError, match="residual needs x0 prediction"):
        super_resolve(load_model(str(plain), device="cpu"), low, 16, 2, seed=0)


def test_phantom_anatomy_trains_a_labelled_base_and_serves_mask_from(stages, cli, tmp_path):
    """`phantoms brain --anatomy` writes what a labelled base trains on (labels.csv as it is, captions
    from --template brain) and what --mask-from takes."""
    import shutil

    from cfgen.phantoms.brain_dataset import write_brain_dataset

    write_brain_dataset(tmp_path / "ph", 3, seed=5, size=32, spacing=6.0, counterfactuals=False,
                        anatomy=("ventricles",))
    model = shutil.copytree(stages["base"], tmp_path / "base")
    res = cli("finetune", tmp_path / "ph" / "labels.csv", "--template", "brain", "-m", model, "--batch-size", "2",
              "--max-steps", "2", "--device", "cpu", "-q", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["training"]["skipped_images"] == [] and np.isfinite(report["training"]["eval_loss_end"])
    given = tmp_path / "ph" / "anatomy" / "brain_00001.nii.gz"
    res = cli("synth3d", "-p", "brain MRI of a 70 year old", "-m", tmp_path / "run" / "model", "--steps", "2",
              "--sr", "none", "--mask-from", given, "--device", "cpu", "-q", "-o", tmp_path / "gen")
    assert res.exit_code == 0, res.output
    got = np.asarray(nib.load(tmp_path / "gen" / "sample-000" / "labels.nii.gz").dataobj)
    # the phantom's ventricles, at the base grid (8^3 from 32^3): labelled voxels lie on 4^3 blocks
    # that hold ventricle voxels of the given map
    src = np.asarray(nib.load(given).dataobj).reshape(8, 4, 8, 4, 8, 4).max(axis=(1, 3, 5))
    assert got.shape == (8, 8, 8) and got.any() and src[got > 0].all()


def test_a_ct_model_trains_in_its_hu_window_and_synthesizes_in_hu(cli, tmp_path):
    """A model whose [defaults] window is fixed (CT: -1024,600 HU) trains on HU scans in that window,
    not each scan's min..max, and synth3d writes HU (int16), read back by nibabel; with --dicom also a
    CT series that SimpleITK reads to the same HU and geometry."""
    import SimpleITK as sitk

    from cfgen.io.intensity import choose_window
    from cfgen.io.scan import read_scan
    from cfgen.models.tabular import CT_FIELDS

    model = _liven(build_ldm3d(tmp_path / "ct", LDM3DSpec(resolution=8, ae_channels=None, unet_channels=(8, 16),
                                                          conditioning=CT_FIELDS, window="-1024,600",
                                                          synth={"spacing": 48.0}), seed=4))
    data = tmp_path / "ph"
    assert cli("phantoms", "ct", "-n", "2", "--size", "32", "--spacing", "12", "--no-counterfactuals", "-o", data,
               "-q").exit_code == 0
    common = ("finetune", data / "labels.csv", "--template", "ct", "-m", model, "--batch-size", "2", "--max-steps",
              "1", "--device", "cpu", "-q")
    assert cli(*common, "-o", tmp_path / "run").exit_code == 0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["params"]["window"] == "-1024,600"
    assert cli(*common, "--window", "minmax", "-o", tmp_path / "mm").exit_code == 0
    assert json.loads((tmp_path / "mm" / "report.json").read_text())["params"]["window"] == "minmax"
    assert "--window 5,1: HIGH must be above LOW" in cli(*common, "--window", "5,1", "-o", tmp_path / "x").output
    scan = read_scan(data / "images" / "ct_00000.nii.gz")  # the two windows differ on a phantom
    assert choose_window(scan.pixels, scan.source_dtype, "minmax").high > 600  # bone: minmax would squeeze HU
    res = cli("synth3d", "-p", "CT with a large right pleural effusion", "-m", tmp_path / "run" / "model", "--steps",
              "2", "--sr", "none", "--device", "cpu", "--dicom", "-q", "-o", tmp_path / "gen")
    assert res.exit_code == 0, res.output
    img = nib.load(tmp_path / "gen" / "sample-000" / "volume.nii.gz")
    hu = np.asarray(img.dataobj)
    assert img.get_data_dtype() == np.int16 and hu.min() >= -1024 and hu.max() <= 600 and hu.std() > 0
    report = json.loads((tmp_path / "gen" / "report.json").read_text())
    assert report["params"]["units"] == "window -1024,600 (int16)"
    assert report["items"][0]["metrics"]["mean_intensity"] == pytest.approx(float(hu.mean()))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "gen" / "sample-000" / "dicom")))
    series = reader.Execute()  # SimpleITK: LPS, array (z, y, x); nibabel: RAS, (x, y, z)
    assert np.array_equal(sitk.GetArrayFromImage(series).transpose(2, 1, 0), hu)
    assert np.allclose(series.GetSpacing(), img.header.get_zooms()) and np.allclose(
        np.array(series.GetOrigin()) * [-1, -1, 1], img.affine[:3, 3], atol=1e-3)
    # a model whose volumes are not in HU: refused before sampling
    mr = build_ldm3d(tmp_path / "mr", LDM3DSpec(resolution=8, ae_channels=None, unet_channels=(8, 16),
                                                conditioning=CT_FIELDS, synth={"spacing": 48.0}), seed=4)
    res = cli("synth3d", "-p", "x", "-m", mr, "--dicom", "--device", "cpu", "-q", "-o", tmp_path / "no")
    assert res.exit_code == 2 and "--dicom" in res.output and "HU" in res.output, res.output


def test_a_haar_wavelet_ct_base_carries_its_anatomy_channels_through_the_transform(cli, tmp_path):
    """demo-ct's design: the nine labels as analog bits (4 channels) go through the Haar transform
    with the image (in_channels 1 + 4, the UNet on 8x the channels at half the side); it trains on
    `phantoms ct`'s label maps and --mask-from gives back exactly the phantom's anatomy, with the
    image in HU."""
    from cfgen.models.tabular import CT_FIELDS
    from cfgen.phantoms.ct import LABELS

    names = list(LABELS)  # the phantoms' label ids 1..9 in order
    model = _liven(build_ldm3d(tmp_path / "ct", LDM3DSpec(
        resolution=32, ae_channels=None, wavelet_levels=1, unet_channels=(8, 16), conditioning=CT_FIELDS,
        window="-1024,600", synth={"spacing": 12.0, "labels": names, "label_encoding": "bits"}), seed=5))
    assert json.loads((model / "autoencoder" / "config.json").read_text())["in_channels"] == 5
    assert json.loads((model / "unet" / "config.json").read_text())["out_channels"] == 40
    data = tmp_path / "ph"
    assert cli("phantoms", "ct", "-n", "2", "--size", "32", "--spacing", "12", "--no-counterfactuals", "-o", data,
               "-q").exit_code == 0
    res = cli("finetune", data / "labels.csv", "--template", "ct", "-m", model, "--batch-size", "2", "--max-steps",
              "1", "--device", "cpu", "-q", "-o", tmp_path / "run")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert np.isfinite(report["training"]["eval_loss_end"]) and not report["training"]["skipped_images"]
    given = data / "anatomy" / "ct_00000.nii.gz"
    args = ["synth3d", "-p", "CT with a large pleural effusion", "-m", tmp_path / "run" / "model", "--steps", "3",
            "--sr", "none", "--device", "cpu", "-q"]
    assert cli(*args, "--mask-from", given, "-o", tmp_path / "fixed").exit_code == 0
    assert cli(*args, "-o", tmp_path / "free").exit_code == 0
    want = np.asarray(nib.load(given).dataobj)
    assert len(np.unique(want)) >= 6  # lobes, heart, airway ... are on this grid
    got = np.asarray(nib.load(tmp_path / "fixed" / "sample-000" / "labels.nii.gz").dataobj)
    assert np.array_equal(got, want)
    free = np.asarray(nib.load(tmp_path / "free" / "sample-000" / "labels.nii.gz").dataobj)
    assert not np.array_equal(free, want)
    hu = nib.load(tmp_path / "fixed" / "sample-000" / "volume.nii.gz")
    assert hu.get_data_dtype() == np.int16 and np.asarray(hu.dataobj).min() >= -1024
    # edit takes image-only models: a clear usage error before any scan is read, not a shape crash
    res = cli("edit", data / "images" / "ct_00000.nii.gz", "-p", "CT with a large pleural effusion", "-m",
              tmp_path / "run" / "model", "--steps", "2", "--device", "cpu", "-q", "-o", tmp_path / "edit")
    assert res.exit_code == 2 and "generates 9 anatomy labels" in res.output, res.output
    # with the scan's label map the pair is inverted and regenerated together: the counterfactual's
    # anatomy is written on the scan's grid, and invert reports how well the labels come back
    res = cli("edit", data / "images" / "ct_00000.nii.gz", "-p", "CT with a large pleural effusion", "-m",
              tmp_path / "run" / "model", "--steps", "2", "--device", "cpu", "-q", "--labels", given,
              "--mask", "refine", "-o", tmp_path / "edit")
    assert res.exit_code == 0, res.output
    item = json.loads((tmp_path / "edit" / "report.json").read_text())["items"][0]
    cf = nib.load(tmp_path / "edit" / item["outputs"]["counterfactual_labels"])
    mask = np.asarray(nib.load(tmp_path / "edit" / item["outputs"]["mask"]).dataobj) > 0.5
    assert cf.get_data_dtype() == np.uint8 and np.allclose(cf.affine, nib.load(given).affine)
    got = np.asarray(cf.dataobj)
    assert np.array_equal(got[~mask], want[~mask])  # outside the edit mask the scan's own anatomy
    assert item["metrics"]["labels_changed_fraction"] == pytest.approx(float((got != want).mean()))
    res = cli("invert", data / "images" / "ct_00000.nii.gz", "-m", tmp_path / "run" / "model", "--steps", "2",
              "--device", "cpu", "-q", "--labels", given, "-o", tmp_path / "inv")
    assert res.exit_code == 0, res.output
    inv = json.loads((tmp_path / "inv" / "report.json").read_text())["items"][0]
    rec = np.asarray(nib.load(tmp_path / "inv" / inv["outputs"]["reconstruction_labels"]).dataobj)
    assert inv["metrics"]["label_agreement"] == pytest.approx(float((rec == want).mean()))
    # --labels on an image-only model is refused, not ignored
    res = cli("edit", data / "images" / "ct_00000.nii.gz", "-p", "x", "-m", "demo-brain", "--labels", given,
              "--device", "cpu", "-q", "-o", tmp_path / "no2")
    assert res.exit_code == 2 and "generates no anatomy label channels" in res.output, res.output
    # evaluate on volumes with the default (2D chest) classifier: skipped per pair, not a crash
    res = cli("evaluate", tmp_path / "edit", "-o", tmp_path / "eval", "-q")
    assert res.exit_code == 0, res.output
    ev = json.loads((tmp_path / "eval" / "report.json").read_text())["items"][0]
    assert ev["classifier"] == "not applied: the classifier is 2D, this pair is 3D" and "flip" not in ev["metrics"]
