#!/usr/bin/env bash
# The README's main command: set up, then run the main job offline on the CPU.
#
# NOTE: the shipped demo model (demo-cxr, trained on chest phantoms) is not in the package
# yet. Until it is, this runs the real pipeline (registry/loader, DICOM I/O, DDIM inversion,
# guided regeneration, report) on a freshly built *untrained* tiny model: the commands, files
# and report are real, the counterfactual's content is not meaningful.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
CFGEN=.venv/bin/cfgen
OUT=runs/quickstart
mkdir -p "$OUT"
echo "== cfgen caption (PRISM Listing 1) =="
$CFGEN caption examples/chexpert_labels.csv --uncertain possible -o "$OUT/captions.csv"
.venv/bin/python -c "import csv,sys; [print(' ', r['caption']) for r in csv.DictReader(open(sys.argv[1]))]" "$OUT/captions.csv"
echo "== model =="
[ -d "$OUT/model" ] || .venv/bin/python -m cfgen.models.build "$OUT/model" --preset tiny
CT=$(.venv/bin/python -c "from pydicom.data import get_testdata_file; print(get_testdata_file('CT_small.dcm'))")
echo "== cfgen invert / edit on pydicom's CT_small.dcm =="
start=$(date +%s%N)
$CFGEN invert "$CT" -s "axial chest CT" -m "$OUT/model" --steps 20 -o "$OUT/invert"
$CFGEN edit "$CT" -s "axial chest CT" -p "axial chest CT without support devices" -m "$OUT/model" \
  --steps 20 --guidance 3 -o "$OUT/edit"
end=$(date +%s%N)
echo "invert + edit wall time (two processes, model loads included): $(( (end - start) / 1000000 )) ms on CPU"
echo "outputs: $OUT/edit/CT_small/{counterfactual.dcm,difference.png,panel.png}; report: $OUT/edit/report.json"
