"""Validate run reports against the documented JSON Schema (cfgen/schemas/report.schema.json)."""
from __future__ import annotations

import json
from pathlib import Path


def validate_report(report: dict) -> None:
    import jsonschema

    import cfgen

    schema = json.loads((Path(cfgen.__file__).parent / "schemas" / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
