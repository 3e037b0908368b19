"""Reading and spectra stay numpy-only: no torch, scipy, scikit-learn or pandas on the scan/inspect path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from reader_helpers import save, write_kohya, write_lokr

from lora_wise.lora.safetensors_io import read_safetensors

HEAVY = ("torch", "scipy", "sklearn", "pandas", "transformers", "diffusers", "peft")
ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
from lora_wise import compute_spectra, read_lora
import scanner.inspect
for path in sys.argv[1:]:
    spectra = compute_spectra(read_lora(path))
    assert spectra.ba.shape[0] > 0 and (spectra.ba[:, 0] > 0).all(), path
    scanner.inspect.inspect_path(path)
loaded = sorted(name for name in {heavy} if name in sys.modules)
assert not loaded, loaded
"""


def test_read_spectra_and_inspect_import_no_heavy_library(tmp_path):
    files = [
        write_kohya(tmp_path / "bf16.safetensors", dtype=torch.bfloat16),
        write_kohya(tmp_path / "f16.safetensors", dtype=torch.float16),
        write_lokr(tmp_path / "lokr.safetensors", {"lora_unet_mid_block_attentions_0_proj_in": (64, 64)})[0],
        ROOT / "scanner" / "data" / "example.safetensors",
    ]
    result = subprocess.run(
        [sys.executable, "-c", CHILD.format(heavy=HEAVY), *map(str, files)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_float_dtype_is_decoded_exactly_as_torch_decodes_it(tmp_path):
    x = torch.randn(6, 5) * 300
    tensors = {
        "bf16": x.bfloat16(), "f16": x.half(), "f64": x.double(), "i32": x.int(), "i8": x.to(torch.int8),
        "bool": x > 0, "e4m3": x.to(torch.float8_e4m3fn), "e5m2": x.to(torch.float8_e5m2),
        "e4m3_all": torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).clone(),
        "e5m2_all": torch.arange(256, dtype=torch.uint8).view(torch.float8_e5m2).clone(),
    }  # fmt: skip
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "all.safetensors"))
    # read_safetensors refuses NaN/Inf, which the all-codes tables hold: decode through the header directly
    from lora_wise.lora.safetensors_io import _load_tensors, read_header

    loaded = _load_tensors(tmp_path / "all.safetensors", read_header(tmp_path / "all.safetensors"))
    for name, tensor in tensors.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], tensor.float().numpy(), err_msg=name)
    finite = {k: v for k, v in tensors.items() if not k.endswith("_all")}
    assert read_safetensors(save(tmp_path / "finite.safetensors", finite)).dtypes["bf16"] == "BF16"
