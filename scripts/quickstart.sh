#!/usr/bin/env bash
# The README's main command: set up, then run the main job offline on the CPU with the shipped
# demo model (demo-cxr, trained on chest phantoms): remove the support devices from a held-out
# phantom, then score the counterfactual against the phantom's true counterfactual.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
CFGEN=.venv/bin/cfgen
OUT=runs/quickstart
mkdir -p "$OUT"
SRC="Chest X-ray showing Pleural Effusion, Support Devices"
TGT="Chest X-ray showing Pleural Effusion"
echo "== cfgen caption (PRISM Listing 1) =="
$CFGEN caption examples/chexpert_labels.csv --uncertain possible -o "$OUT/captions.csv"
.venv/bin/python -c "import csv,sys; [print(' ', r['caption']) for r in csv.DictReader(open(sys.argv[1]))]" "$OUT/captions.csv"
echo "== cfgen invert: how well demo-cxr reconstructs the example =="
$CFGEN invert examples/cxr_demo.png -s "$SRC" -o "$OUT/invert" --overwrite
echo "== cfgen edit: '$SRC' -> '$TGT' =="
start=$(date +%s%N)
# demo-cxr's default mask, refine: a generous automatic mask, then only where that edit changed the scan
$CFGEN edit examples/cxr_demo.png -s "$SRC" -p "$TGT" -o "$OUT/edit" --overwrite
end=$(date +%s%N)
echo "edit wall time (process start and model load included): $(( (end - start) / 1000000 )) ms on CPU"
echo "== cfgen evaluate: against the true counterfactual (rendered by the phantom world) =="
printf 'name,original,counterfactual,true_counterfactual,label,target,source_prompt,prompt\n' > "$OUT/pairs.csv"
printf 'cxr_demo,../../examples/cxr_demo.png,edit/cxr_demo/counterfactual.png,../../examples/cxr_demo_true_no_devices.png,Support Devices,0,"%s","%s"\n' "$SRC" "$TGT" >> "$OUT/pairs.csv"
$CFGEN evaluate "$OUT/pairs.csv" -o "$OUT/evaluate"
echo "== cfgen edit, 3D: examples/brain_demo.nii.gz (a held-out brain phantom, 48 year old male) with demo-brain =="
BRAIN="Brain MRI of a 48 year old male with no lesions"
start=$(date +%s%N)
$CFGEN edit examples/brain_demo.nii.gz -m demo-brain -s "$BRAIN" -p "Brain MRI of a 85 year old male with no lesions" \
  -o "$OUT/brain-85" --overwrite
end=$(date +%s%N)
echo "3D edit wall time (64^3, process start and model load included): $(( (end - start) / 1000000 )) ms on CPU"
echo "outputs: $OUT/edit/cxr_demo/{counterfactual.png,difference.png,panel.png}; $OUT/evaluate/{report.json,examples.png};"
echo "  $OUT/brain-85/brain_demo/{counterfactual.nii.gz,panel.png}"
