"""The only network module of ``lora_wise``: publish a dataset folder to the Hub, download one back.

``publish`` decides itself what goes up, before any upload: it lists the remote tree once
(``list_repo_tree``, whose entries carry the git blob id and, for LFS files, the sha256) and
compares with the local files' sha256 / git blob sha1. Only new or changed files are committed
(one commit), stale remote shards under ``data/`` are deleted (``datasets`` globs
``data/<config>/<split>-*.parquet``, so a leftover shard would silently join a split), and an
unchanged folder makes no commit at all. ``dry_run`` returns the same plan and sends nothing.
The endpoint comes from ``HF_ENDPOINT`` (read at call time), the token from the argument,
``HF_TOKEN`` or the user's ``hf auth login``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lora_wise._files import git_blob_sha1, sha256_file
from lora_wise.errors import HubError

REPO_TYPE = "dataset"
#: Remote paths publish owns: stale files there are deleted; anything else on the repo is left alone.
OWNED_PREFIXES = ("data/",)


@dataclass
class PlannedFile:
    path: str  # path in the repo, posix
    size: int
    reason: str  # "new" or "changed"


@dataclass
class PublishPlan:
    """What a publish sends (or, with ``dry_run``, would send)."""

    repo_id: str
    repo_exists: bool
    uploads: list[PlannedFile] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    commit_url: str | None = None
    dry_run: bool = False

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.uploads)

    @property
    def changes(self) -> bool:
        return bool(self.uploads or self.deletions)


def _api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)


def local_files(folder: str | Path) -> dict[str, Path]:
    """Files publish considers: everything but hidden paths and temp files, by posix repo path."""
    root = Path(folder)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (
            path.is_file()
            and not any(p.startswith(".") for p in rel.parts)
            and not path.name.endswith(".tmp")
        ):
            out[rel.as_posix()] = path
    return out


def remote_files(
    repo_id: str, token: str | None = None, revision: str | None = None
) -> dict[str, object] | None:
    """Remote path -> ``RepoFile`` (None when the repo does not exist)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        entries = _api(token).list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=revision)
        return {e.path: e for e in entries if hasattr(e, "blob_id")}
    except RepositoryNotFoundError:
        return None
    except RevisionNotFoundError:  # a repo with no commit yet
        return {}


def _unchanged(local: Path, remote) -> bool:
    if remote.size != local.stat().st_size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == sha256_file(local)
    return remote.blob_id == git_blob_sha1(local)


def plan_publish(folder: str | Path, repo_id: str, token: str | None = None) -> PublishPlan:
    """Compare the folder with the remote repo: uploads (new/changed), stale deletions, unchanged."""
    local = local_files(folder)
    if "README.md" not in local:
        raise HubError(f"{folder}: no README.md: build the dataset first (`lora-wise build`)")
    _check_resolvable()
    remote = _call(remote_files, repo_id, token)
    plan = PublishPlan(repo_id, remote is not None)
    remote = remote or {}
    for rel, path in local.items():
        entry = remote.get(rel)
        if entry is None:
            plan.uploads.append(PlannedFile(rel, path.stat().st_size, "new"))
        elif _unchanged(path, entry):
            plan.unchanged.append(rel)
        else:
            plan.uploads.append(PlannedFile(rel, path.stat().st_size, "changed"))
    plan.deletions = sorted(p for p in remote if p.startswith(OWNED_PREFIXES) and p not in local)
    return plan


def publish(folder: str | Path, repo_id: str, token: str | None = None, dry_run: bool = False,
            private: bool = False) -> PublishPlan:  # fmt: skip
    """Create the dataset repo if missing and commit only what changed (see the module doc)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.utils import get_token

    token = token or get_token()
    plan = plan_publish(folder, repo_id, token)
    plan.dry_run = dry_run
    if dry_run or not plan.changes:
        return plan
    if not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = _api(token)
    if not plan.repo_exists:
        _call(api.create_repo, repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
    root = Path(folder)
    operations = [CommitOperationAdd(f.path, str(root / f.path)) for f in plan.uploads]
    operations += [CommitOperationDelete(p) for p in plan.deletions]
    message = f"lora-wise publish: {len(plan.uploads)} file(s) up, {len(plan.deletions)} removed"
    info = _call(api.create_commit, repo_id, operations, commit_message=message, repo_type=REPO_TYPE)
    plan.commit_url = info.commit_url
    return plan


def download(repo_id: str, revision: str | None = None, allow_patterns: list[str] | str | None = None,
             token: str | None = None) -> Path:  # fmt: skip
    """The dataset repo's snapshot folder in the Hub cache (offline: from the cache alone)."""
    from huggingface_hub import snapshot_download

    folder = _call(snapshot_download, repo_id, repo_type=REPO_TYPE, revision=revision,
                   allow_patterns=allow_patterns, token=token,
                   endpoint=os.environ.get("HF_ENDPOINT") or None)  # fmt: skip
    return Path(folder)


def _check_resolvable() -> None:
    """Fail at once when the endpoint's host name does not resolve (no network, a typo in
    HF_ENDPOINT): that will not change within huggingface_hub's five retries (23 s), which are
    there for faults that pass."""
    host = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        message = (
            f"cannot reach the Hub: {host!r} does not resolve ({reason}); check the network or HF_ENDPOINT"
        )
        raise HubError(message) from None


def _call(fn, *args, **kwargs):
    """Run a huggingface_hub call; its failures become one-line :class:`HubError`s."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    failures = (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        OSError,
        ValueError,
        httpx2.HTTPError,
    )
    try:
        return fn(*args, **kwargs)
    except failures as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubError(f"{getattr(fn, '__name__', 'hub call')}: {first}") from exc
