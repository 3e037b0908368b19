"""Fit a reference bank from LoRA-WiSE spectra and save it where the scanner finds it.

    .venv/bin/python scripts/fit_bank.py runs/mini --config low-tiny_sd-r8 --config medium-tiny_sd-r8

SOURCE is anything ``lora_wise.evaluation.load_table`` reads: a LoRA-WiSE dataset folder or
Hub repo id, or a factory output folder. Several ``--config`` of one backbone and
rank are pooled into one bank (e.g. the low and medium ranges: sizes 1-6 and 1-50). The bank
is written to ``<out>/<backbone>-r<rank>.safetensors`` (default: the packaged
``lora_wise/data/banks/``), then read back and checked, and the paper's protocol is run on
the pooled table at every stored step so the bank ships with its own measured accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lora_wise.bank import BANKS_DIR, fit_bank, load_bank_file, save_bank
from lora_wise.errors import LoraWiseError
from lora_wise.evaluation import evaluate, load_table
from lora_wise.table import SpectraTable

DEFAULT_STEPS = "300,600,900,1200"  # ~7.4 MB per step for 600 rank-8 models: keep the package small


def concat_tables(tables: list[SpectraTable]) -> SpectraTable:
    """Stack tables of the same layers (configs of one backbone and rank)."""
    first = tables[0]
    for t in tables[1:]:
        if t.layers != first.layers or t.ba.shape[2] != first.ba.shape[2]:
            raise LoraWiseError("configs to pool must share layers and rank")
    fields = ("a", "b", "ba", "fro", "size", "micro_dataset", "step", "rank", "backbone", "model_id")
    return SpectraTable(first.layers, **{k: np.concatenate([getattr(t, k) for t in tables]) for k in fields})


def recipe_from_factory(source: Path) -> dict:
    """The training recipe the factory recorded in its sidecars (first snapshot found)."""
    for sidecar in sorted(source.rglob("step-*.json")):
        meta = json.loads(sidecar.read_text())
        job = meta.get("job", {})
        keys = ("learning_rate", "batch_size", "steps", "snapshot_every", "target_modules", "seed", "resolution")
        return {**{k: job[k] for k in keys if k in job}, **meta.get("recipe", {})}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("--config", action="append", default=None, help="config(s) to pool; repeat the flag")
    parser.add_argument("--steps", default=DEFAULT_STEPS, help="snapshot steps to keep ('all' for every one)")
    parser.add_argument("--kinds", default="a,b,ba")
    parser.add_argument("--base", choices=("ridge", "votes"), default="ridge",
                        help="continuous estimate: per-layer log-log ridge, or the mean of the 1-NN votes")
    parser.add_argument("--hold-out", action="append", default=[], metavar="MICRO_DATASET",
                        help="leave this micro-dataset out of the bank (e.g. the one the bundled example comes from)")
    parser.add_argument("--out", default=str(BANKS_DIR))
    parser.add_argument("--repeats", type=int, default=10, help="repeats of the self-check protocol (0: skip)")
    args = parser.parse_args(argv)
    try:
        tables = [load_table(args.source, c) for c in (args.config or [None])]
        table = concat_tables(tables)
        if args.hold_out:  # the scanner's bundled example must be a LoRA the bank has never seen
            table = table.subset(~np.isin(table.micro_dataset, args.hold_out))
        steps = None if args.steps == "all" else [int(s) for s in args.steps.split(",")]
        recipe = recipe_from_factory(Path(args.source)) if Path(args.source).is_dir() else {}
        recipe["configs"] = args.config or []
        recipe["held_out"] = args.hold_out
        bank = fit_bank(table, recipe=recipe, steps=steps, kinds=tuple(args.kinds.split(",")),
                        params={"base": args.base, "coverage": 0.8, "tie": "median"}, created_by="scripts/fit_bank.py")
        path = save_bank(bank, Path(args.out) / f"{bank.name}.safetensors")
        loaded = load_bank_file(path)
    except LoraWiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    size_mb = path.stat().st_size / 1e6
    print(f"{path}: {len(loaded.table)} reference snapshots, steps {loaded.steps}, sizes {loaded.header['sizes']}, "
          f"{size_mb:.1f} MB")
    for step in loaded.steps if args.repeats else []:
        sub = loaded.table.subset(loaded.table.step == step)
        for r in evaluate(sub, ("frobenius-nn", "dsire", "interval"), repeats=args.repeats):
            print(f"  step {step:5d} {r.method:13s} MAE {r.mae[0]:6.2f} ± {r.mae[1]:.2f}  "
                  f"acc {r.accuracy[0]:5.1f} ± {r.accuracy[1]:.1f} %  {'; '.join(r.notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
