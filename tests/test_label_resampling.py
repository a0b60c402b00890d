"""A labelled model's label maps cross grids as one-hot channels: checked against the CT phantom
drawn directly on the model's grid (an independent rendering of the same subject), and a batch of
labelled edits records a row without its label map as an error item and goes on."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np

from cfgen.io.nifti import write_volume
from cfgen.phantoms import ct


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def test_a_finer_label_map_reaches_the_model_grid_as_the_phantom_drawn_there(tmp_path):
    from cfgen.editing import core, labelled
    from cfgen.editing.params import EditParams
    from cfgen.io.scan import read_scan
    from cfgen.models.label_codes import decode
    from cfgen.models.loader import load_model

    exo, attrs = ct.subject(95001, 0)
    maps = ct.tissue_maps(exo, attrs, 64, 6.0)
    fine = ct.label_map(maps)
    drawn_coarse = ct.label_map(ct.tissue_maps(exo, attrs, 32, 12.0))  # the reference: 32^3 x 12 mm
    write_volume(tmp_path / "ct.nii.gz", ct.acquire(ct.compose(maps), exo), ct.affine(64, 6.0), "CT phantom")
    write_volume(tmp_path / "labels.nii.gz", fine, ct.affine(64, 6.0), "labels")
    model = load_model("demo-ct", device="cpu")
    assert model.entry.resolution == 32 and model.entry.synth["label_encoding"] == "bits"
    p = EditParams.resolve(model.entry.defaults, prompt="CT", source_prompt="CT", labels=str(tmp_path / "labels.nii.gz"))
    prep = core.prepare(model, read_scan(tmp_path / "ct.nii.gz"), p)
    assert prep.placement.resized == (32, 32, 32)  # this path resamples
    lo, hi = model.entry.value_range
    got = decode(prep.labels[0].numpy(), 9, "bits", (lo + hi) / 2)
    nearest = fine[1::2, 1::2, 1::2]  # a plain nearest-neighbour pick, for comparison
    for k in (1, 2, 3, 4, 5, 8):  # five lobes and the heart: large enough to be on a 12 mm grid
        want = drawn_coarse == k
        assert _dice(got == k, want) >= 0.92, k
        assert _dice(got == k, want) >= _dice(nearest == k, want), k
    # and back to the scan's grid: the map as given, but for the boundary voxels
    back = labelled.to_scan(prep.labels, prep, model)
    assert back.shape == fine.shape and back.dtype == np.uint8
    assert float((back == fine).mean()) >= 0.98


def write_jobs(rows: list[dict], data, path) -> None:
    """Rows of a phantom folder's edit_jobs.csv as a batch CSV elsewhere (image and labels made absolute)."""
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (str(data / v) if k in ("image", "labels") and v else v) for k, v in r.items()})


def test_a_labelled_batch_records_a_row_without_its_label_map_and_goes_on(cli, tmp_path):
    data = tmp_path / "ph"
    assert cli("phantoms", "ct", "-n", "1", "-o", data, "-q").exit_code == 0
    rows = list(csv.DictReader((data / "edit_jobs.csv").open()))[:2]
    rows[1]["labels"] = ""
    write_jobs(rows, data, tmp_path / "jobs.csv")
    res = cli("edit", "--batch", tmp_path / "jobs.csv", "-m", "demo-ct", "--steps", "2", "--device", "cpu", "-q",
              "-o", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [i["status"] for i in report["items"]] == ["ok", "error"], report["items"]
    ok, bad = report["items"]
    assert ok["name"] == rows[0]["output"] and bad["name"] == rows[1]["output"]  # the refused row is named
    assert bad["error"].startswith(f"{tmp_path / 'jobs.csv'} line 3: no label map for this row"), bad
    assert res.exit_code != 0  # the run says some rows failed
    # the model's default mask on CT (models.toml): outside it the scan itself, in HU
    scan = np.asarray(nib.load(data / rows[0]["image"]).dataobj)
    out = np.asarray(nib.load(tmp_path / "out" / ok["outputs"]["counterfactual"]).dataobj)
    mask = np.asarray(nib.load(tmp_path / "out" / ok["outputs"]["mask"]).dataobj)
    assert 0.0 < float((mask > 0).mean()) < 1.0
    assert np.array_equal(out[mask == 0], scan[mask == 0])
