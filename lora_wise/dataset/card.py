"""The Hub dataset card (``README.md``) of a LoRA-WiSE dataset folder, rendered from its manifest.

The YAML header is produced with ``yaml.safe_dump`` (never by string templating) so that the
``configs:`` / ``data_files`` the Hub and ``datasets`` read are always valid; the prose comes from
``dataset_card/README.md.j2``. Rendering is deterministic (no dates): an unchanged build gives
byte-identical cards, so a re-publish uploads nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lora_wise._files import atomic_write_text
from lora_wise.paper import RANGES, SCHEDULES, TARGET_MODULES

TEMPLATE = Path(__file__).resolve().parents[2] / "dataset_card" / "README.md.j2"
DEFAULT_REPO_ID = "<user>/lora-wise"


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M"


def card_metadata(manifest: dict) -> dict[str, Any]:
    """The YAML header: configs with data_files per split, license, task categories, sizes, tags."""
    configs = []
    for i, (name, entry) in enumerate(manifest["configs"].items()):
        data_files = [{"split": split, "path": f"data/{name}/{split}-*.parquet"} for split in entry["splits"]]
        config = {"config_name": name, "data_files": data_files}
        if i == 0:
            config["default"] = True
        configs.append(config)
    rows = sum(
        s["rows"]
        for e in manifest["configs"].values()
        if e["kind"] == "spectra"
        for s in e["splits"].values()
    )
    return {
        "license": "mit",
        "task_categories": ["tabular-classification"],
        "size_categories": [size_category(rows)],
        "tags": ["lora", "dsire", "dataset-size-recovery", "model-forensics", "stable-diffusion", "spectra"],
        "pretty_name": "LoRA-WiSE (lora-wise build)",
        "configs": configs,
    }


def render_card(manifest: dict, repo_id: str | None = None) -> str:
    """The full ``README.md`` text for ``manifest`` (see :func:`lora_wise.dataset.build.read_manifest`)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    spectra = {k: v for k, v in manifest["configs"].items() if v["kind"] == "spectra"}
    header = yaml.safe_dump(card_metadata(manifest), sort_keys=False, allow_unicode=True)
    totals = {
        "rows": sum(s["rows"] for e in spectra.values() for s in e["splits"].values()),
        "models": sum(s["models"] for e in spectra.values() for s in e["splits"].values()),
        "bytes": sum(s["bytes"] for e in manifest["configs"].values() for s in e["splits"].values()),
    }
    return env.get_template(TEMPLATE.name).render(
        yaml_header=header.strip(),
        repo_id=repo_id or manifest.get("repo_id") or DEFAULT_REPO_ID,
        configs=manifest["configs"],
        spectra_configs=spectra,
        first_config=next(iter(spectra), "medium-tiny_sd-r8"),
        totals=totals,
        ranges=RANGES,
        schedules=SCHEDULES,
        target_modules=TARGET_MODULES,
        human_bytes=human_bytes,
    )


def write_card(folder: str | Path, manifest: dict, repo_id: str | None = None) -> Path:
    """Render the card into ``folder/README.md`` (atomically) and return its path."""
    return atomic_write_text(Path(folder) / "README.md", render_card(manifest, repo_id))


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
