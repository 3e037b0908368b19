"""Local files and folders go through the same candidate rule as a Hub repo and are never deleted."""

import pytest
from sources_helpers import sha256, write_lora, write_peft_adapter

from scanner.errors import NoLoraFiles, TooLarge, UnsafeFormat
from scanner.sources import fetched, resolve


def test_local_file_is_returned_as_is_and_never_deleted(tmp_path):
    path = write_lora(tmp_path / "style.safetensors", style="kohya")
    with fetched(str(path)) as [got]:
        assert got.source == "local" and got.path == path and got.size == path.stat().st_size
        assert not got.temporary and not got.verified
        assert got.sha256 == sha256(path.read_bytes())  # what an auditor compares with other copies
    assert path.exists()


def test_local_folder_lists_candidates_and_peft_companions(tmp_path):
    write_lora(tmp_path / "a.safetensors")
    write_lora(tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    write_peft_adapter(tmp_path / "adapter")
    (tmp_path / ".hidden").mkdir()
    write_lora(tmp_path / ".hidden" / "x.safetensors")
    got = resolve(str(tmp_path))
    assert [f.name for f in got] == ["a.safetensors", "adapter/adapter_model.safetensors"]
    assert got[1].companions["adapter_config.json"] == tmp_path / "adapter" / "adapter_config.json"
    [peft] = resolve(str(tmp_path / "adapter"))
    assert peft.companions["adapter_config.json"].is_file()
    [named] = resolve(str(tmp_path), file="adapter")
    assert named.name == "adapter/adapter_model.safetensors"


def test_local_errors(tmp_path):
    pickle = tmp_path / "lora.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(UnsafeFormat, match="unsafe format, not scanned"):
        resolve(str(pickle))
    with pytest.raises(UnsafeFormat):
        resolve(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoLoraFiles) as info:
        resolve(str(empty))
    assert info.value.exit_code == 3
    big = write_lora(tmp_path / "big.safetensors")
    with pytest.raises(TooLarge):
        resolve(str(big), max_size=10)
