"""Target strings parse into the right source, and anything else is a usage error (exit 4)."""

import pytest

from scanner.errors import TargetError
from scanner.targets import parse_target


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user/repo", dict(kind="hub", repo_id="user/repo", revision=None, filename=None)),
        ("user/my.lora-v2@v1.0", dict(kind="hub", repo_id="user/my.lora-v2", revision="v1.0")),
        (
            "hf://user/repo/sub/lora.safetensors",
            dict(kind="hub", repo_id="user/repo", filename="sub/lora.safetensors"),
        ),
        (
            "hf://user/repo@refs/pr/1",
            dict(kind="hub", repo_id="user/repo", revision="refs/pr/1", filename=None),
        ),
        (
            "hf://user/repo@refs/pr/1/a.safetensors",
            dict(kind="hub", revision="refs/pr/1", filename="a.safetensors"),
        ),
        (
            "hf://user/repo@abc/lora.safetensors",
            dict(kind="hub", revision="abc", filename="lora.safetensors"),
        ),
        ("https://huggingface.co/user/repo", dict(kind="hub", repo_id="user/repo", filename=None)),
        (
            "https://huggingface.co/user/repo/blob/main/a%20b.safetensors",
            dict(kind="hub", repo_id="user/repo", revision="main", filename="a b.safetensors"),
        ),
        (
            "https://hf.co/user/repo/resolve/0123abc/x/y.safetensors",
            dict(kind="hub", revision="0123abc", filename="x/y.safetensors"),
        ),
        ("https://huggingface.co/user/repo/tree/dev", dict(kind="hub", revision="dev", filename=None)),
        ("civitai:123", dict(kind="civitai", model_id=123, version_id=None)),
        ("CIVITAI:123@456", dict(kind="civitai", model_id=123, version_id=456)),
        ("civitai:@456", dict(kind="civitai", model_id=None, version_id=456)),
        (
            "https://civitai.com/models/123?modelVersionId=456",
            dict(kind="civitai", model_id=123, version_id=456),
        ),
        ("https://civitai.com/models/123/some-slug", dict(kind="civitai", model_id=123, version_id=None)),
        ("https://civitai.com/api/download/models/456", dict(kind="civitai", model_id=None, version_id=456)),
        (
            "https://example.org/files/lora.safetensors",
            dict(kind="url", url="https://example.org/files/lora.safetensors"),
        ),
        ("http://127.0.0.1:8000/x.safetensors", dict(kind="url")),
    ],
)
def test_target_forms(text, expected):
    target = parse_target(text)
    for key, value in expected.items():
        assert getattr(target, key) == value, (text, key)


def test_hf_endpoint_mirror_urls_are_hub_targets(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.local:9000")
    target = parse_target("http://mirror.local:9000/user/repo/blob/main/lora.safetensors")
    assert (target.kind, target.repo_id, target.filename) == ("hub", "user/repo", "lora.safetensors")


def test_existing_local_path_wins_over_hub_id(tmp_path, monkeypatch):
    (tmp_path / "user" / "repo").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    target = parse_target("user/repo")
    assert target.kind == "local" and target.path.is_dir()
    assert parse_target(str(tmp_path)).kind == "local"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "justaname",
        "a/b/c",
        "./missing/lora.safetensors",
        "civitai:",
        "civitai:abc",
        "civitai:12@x",
        "ftp://example.org/lora.safetensors",
        "https://huggingface.co/user",
        "https://huggingface.co/datasets/user/repo",
        "hf://datasets/user/repo/file.parquet",
        "https://civitai.com/images/123",
        "https://civitai.com/models/12?modelVersionId=abc",
    ],
)
def test_bad_targets_are_usage_errors(text):
    with pytest.raises(TargetError) as info:
        parse_target(text)
    assert info.value.exit_code == 4
    message = str(info.value)
    assert "\n" not in message and len(message) > 20
