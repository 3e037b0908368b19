"""The published JSON Schema of ``lora-scan --json``, for every test that reads such an output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "scan.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def valid_envelope(text: str) -> dict[str, Any]:
    """``text`` as exactly one JSON document that the schema accepts."""
    data = json.loads(text)
    VALIDATOR.validate(data)
    return data
