#!/usr/bin/env bash
# The scan path on the oldest Python that setup.cfg promises (python_requires >= 3.10): a fresh
# venv with the package (no dependencies) and only what a scan needs, then the commands an
# auditor runs first. Skips, saying so, where no Python 3.10 is installed.
#   bash scripts/check_python310.sh            (VENV=dir to keep the venv elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for candidate in python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python; do
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null; then
        PY=$candidate
        break
    fi
done
if [ -z "$PY" ]; then
    echo "python 3.10 check skipped: no Python 3.10 here (python3.10 or pyenv's 3.10)"
    exit 0
fi

VENV=${VENV:-$(mktemp -d)/py310}
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# What `lora-scan` and `lora-scan inspect` import: no torch, no diffusers.
"$VENV/bin/python" -m pip install --quiet numpy safetensors click rich huggingface_hub httpx2 pyyaml scikit-learn jsonschema
"$VENV/bin/python" -m pip install --quiet --no-deps .

cd "$VENV"  # away from the source tree: the installed package is what runs
"$VENV/bin/lora-scan" -h >/dev/null
"$VENV/bin/lora-scan" --json --quiet -o scan.json
"$VENV/bin/python" - <<'PY'
import json
import jsonschema
from lora_wise.cli.docs import document
report = json.load(open("scan.json"))
jsonschema.validate(report, json.loads(document("scan.schema.json")))
assert report["exit_code"] == 0 and report["reports"][0]["estimate"] is not None, report
PY
"$VENV/bin/lora-scan" inspect "$("$VENV/bin/python" -c 'from scanner.example import EXAMPLE; print(EXAMPLE)')" --raw >/dev/null
echo "python 3.10 check passed: $("$VENV/bin/python" -V), $("$VENV/bin/lora-scan" --version)"
