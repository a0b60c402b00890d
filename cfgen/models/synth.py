"""The ``[synth]`` table of a 3D model entry (models.toml or a folder's cfgen.toml): which role a
model plays in `cfgen synth3d`. Pure data, imports no torch (the registry reads it).

A base stage (text- or tabular-conditioned 3D model)::

  [synth]
  spacing = 3.0                        # mm per voxel at the model's resolution
  labels = ["ventricles", "lesions"]   # optional, voxel-space or Haar-wavelet models: anatomy channels
                                       # generated with the image (UNet channels = (1 + label channels) x 8^levels)
  label_encoding = "bits"              # optional: "one-hot" (default, one channel per label) or "bits"
                                       # (analog bits: label k as the binary digits of k, ceil(log2(L + 1))
                                       # channels, so nine labels take 4 channels instead of 9)
  label_codes = [1, 2, 3, 4, 5, 6, 16, 8, 9]  # optional, bits only: label k's code (default k), e.g. a thin
                                       # structure on a bit of its own (cfgen/models/label_codes.py)
  super_resolution = "demo-brain-sr"   # optional: the stage synth3d runs next (entry name, or a folder
                                       # relative to this model's folder)
  given_labels = "clean"               # optional: "noised" (default) or "clean": how `--mask-from` gives the
                                       # label channels at each sampling step; "clean" for a model trained
                                       # with `cfgen finetune --label-condition` (labels sometimes clean)
  guidance = 2.0                       # optional: synth3d's default guidance scale (>= 1), where the
                                       # one that calibrates generation differs from the edits' ([defaults])
  label_guidance = 5.0                 # optional, given_labels = "clean" only: synth3d --mask-from's default
                                       # label guidance (>= 1; cfgen/synthesis/generate.py LabelGuided)
  label_guidance_labels = ["airway", "vessel"]  # optional: label guidance only in the latent cells that
                                       # hold these labels' given voxels [default: everywhere]

A super-resolution stage (voxel space, UNet input = noisy volume + upsampled low-res volume)::

  [synth]
  scale = 2          # the factor it was trained to add
  patch = 32         # sliding-window side when sampling (and the training crop)
  overlap = 0.25     # window overlap when sampling
  residual = true    # optional: the UNet predicts the volume minus the upsampled input (x0 prediction
                     # only), so an untrained stage starts from trilinear upsampling
"""
from __future__ import annotations

from typing import Any

from cfgen.errors import ModelError

KEYS = {"spacing": (int, float), "labels": list, "super_resolution": str, "scale": int, "patch": int,
        "overlap": (int, float), "residual": bool, "label_encoding": str, "guidance": (int, float),
        "given_labels": str, "label_codes": list, "label_guidance": (int, float),
        "label_guidance_labels": list}
LABEL_ENCODINGS = ("one-hot", "bits")
GIVEN_LABELS = ("noised", "clean")


def check_synth_table(table: Any, where: str) -> dict[str, Any]:
    """The validated table (a copy); ``where`` names the file and entry in errors."""
    if not isinstance(table, dict):
        raise ModelError(f"{where}: [synth] must be a table")
    for key, value in table.items():
        if key not in KEYS:
            raise ModelError(f"{where}: [synth] key '{key}' is unknown (known: {', '.join(KEYS)})")
        if not isinstance(value, KEYS[key]) or (isinstance(value, bool) and KEYS[key] is not bool):
            raise ModelError(f"{where}: [synth] {key} = {value!r} has the wrong type")
    labels = table.get("labels", [])
    if not all(isinstance(x, str) and x for x in labels) or len(set(labels)) != len(labels):
        raise ModelError(f"{where}: [synth] labels must be distinct non-empty names, got {labels!r}")
    for key, known in (("label_encoding", LABEL_ENCODINGS), ("given_labels", GIVEN_LABELS)):
        if key in table and table[key] not in known:
            raise ModelError(f"{where}: [synth] {key} = {table[key]!r} is unknown (known: {', '.join(known)})")
        if key in table and not labels:
            raise ModelError(f"{where}: [synth] {key} needs labels")
    _check_codes(table, labels, where)
    _check_label_guidance(table, labels, where)
    if "scale" in table and table["scale"] < 2:
        raise ModelError(f"{where}: [synth] scale = {table['scale']} must be at least 2")
    if "scale" in table and labels:
        raise ModelError(f"{where}: [synth] a super-resolution stage (scale) generates no label channels")
    if "residual" in table and "scale" not in table:
        raise ModelError(f"{where}: [synth] residual applies to a super-resolution stage (scale) only")
    if table.get("patch", 8) < 8:
        raise ModelError(f"{where}: [synth] patch = {table['patch']} must be at least 8 voxels")
    if not 0 <= table.get("overlap", 0.25) < 1:
        raise ModelError(f"{where}: [synth] overlap = {table['overlap']} must be in [0, 1)")
    if table.get("guidance", 1.0) < 1:
        raise ModelError(f"{where}: [synth] guidance = {table['guidance']} must be at least 1 (1 = no guidance)")
    if "guidance" in table and "scale" in table:
        raise ModelError(f"{where}: [synth] guidance applies to a base stage, not a super-resolution stage (scale)")
    if table.get("spacing", 1.0) <= 0:
        raise ModelError(f"{where}: [synth] spacing = {table['spacing']} must be positive")
    return {k: (list(v) if isinstance(v, list) else v) for k, v in table.items()}


def _check_label_guidance(table: dict, labels: list, where: str) -> None:
    if table.get("label_guidance", 1.0) < 1:
        raise ModelError(f"{where}: [synth] label_guidance = {table['label_guidance']} must be at least 1 (1 = none)")
    if ("label_guidance" in table or "label_guidance_labels" in table) and table.get("given_labels") != "clean":
        raise ModelError(f"{where}: [synth] label_guidance needs given_labels = \"clean\" (a model trained with "
                         "labels given clean)")
    unknown = [x for x in table.get("label_guidance_labels", []) if x not in labels]
    if unknown:
        raise ModelError(f"{where}: [synth] label_guidance_labels names {unknown!r}, not among labels {labels!r}")


def _check_codes(table: dict, labels: list, where: str) -> None:
    if "label_codes" not in table:
        return
    codes = table["label_codes"]
    if table.get("label_encoding") != "bits":
        raise ModelError(f"{where}: [synth] label_codes needs label_encoding = \"bits\"")
    if (len(codes) != len(labels) or len(set(codes)) != len(codes)
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < 256 for c in codes)):
        raise ModelError(f"{where}: [synth] label_codes must be {len(labels)} distinct integers 1..255, one per "
                         f"label, got {codes!r}")


def is_super_resolution(entry) -> bool:
    return "scale" in entry.synth


def label_names(entry) -> list[str]:
    return list(entry.synth.get("labels", []))


def label_encoding(synth: dict[str, Any]):
    """The ``[synth]`` table's label encoding (cfgen.models.label_codes.Encoding)."""
    from cfgen.models.label_codes import Encoding

    codes = synth.get("label_codes")
    return Encoding(str(synth.get("label_encoding", "one-hot")), tuple(codes) if codes else None)


def label_channel_count(synth: dict[str, Any]) -> int:
    """How many channels the labels of a ``[synth]`` table take beside the image."""
    from cfgen.models.label_codes import channel_count

    return channel_count(len(synth.get("labels", [])), label_encoding(synth))


def labelled_latents(latent_channels: int, image_channels: int, synth: dict[str, Any]) -> list[bool]:
    """Which latent channels hold labels: in voxel space the label channels; through the Haar transform
    (per channel, input channel fastest in the band order) every channel whose index modulo image +
    label channels is a label's."""
    total = image_channels + label_channel_count(synth)
    return [c % total >= image_channels for c in range(latent_channels)]


def toml_lines(synth: dict[str, Any]) -> list[str]:
    """The [synth] table as TOML lines (saved model folders keep their role)."""
    import json

    if not synth:
        return []
    return ["", "[synth]"] + [f"{k} = {json.dumps(v)}" for k, v in synth.items()]
