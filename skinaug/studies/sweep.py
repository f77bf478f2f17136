"""The latent-size sweep behind the paper's Table 2: one VQ-VAE per (codebook size K, code dimension D).

    OUT/sweep_plan.json     the data and training options every configuration shares
    OUT/K{k}_D{d}/          a model directory (+ codes.h5 of the data, + sweep_row.json once finished)
    OUT/sweep.csv, .json    one row per finished configuration

Rerunning the same command continues: finished configurations are skipped, an interrupted training resumes
from its checkpoint, and new (K, D) pairs may be added. Other training options need --overwrite or another OUT.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from ..generation.encode_decode import encode_dataset
from ..errors import SkinaugError
from ..storage.fs import claim_output, marked_folder, read_json, write_json, write_text
from ..storage.modeldir import ModelDir
from ..runtime import log
from ..training.vqvae import CHECKPOINT, TrainOptions, train_vqvae
from ..vqvae.model import VQVAEConfig

PLAN = "sweep_plan.json"
ROW = "sweep_row.json"
SWEEP_FOLDER = marked_folder("sweep folder", PLAN, resumable=True)
COLUMNS = ["codebook_size", "code_dim", "used_codes_top", "used_codes_bottom", "co_occurring_pairs", "perplexity_top",
           "perplexity_bottom", "val_mse", "mse", "epochs", "train_seconds", "model"]


def config_dir(out, codebook_size: int, code_dim: int) -> Path:
    return Path(out) / f"K{codebook_size}_D{code_dim}"


def _plan(data, labels, base: VQVAEConfig, options: TrainOptions) -> dict:
    shared = {k: v for k, v in asdict(base).items() if k not in ("codebook_size", "code_dim")}
    training = {k: getattr(options, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "val_fraction", "seed", "augment")}
    return {"data": str(Path(data).resolve()), "labels": str(Path(labels).resolve()) if labels else None,
            "vqvae": shared, "training": training}


def _check_plan(out: Path, plan: dict) -> None:
    path = out / PLAN
    if path.is_file():
        saved = read_json(path)
        if saved != plan:
            changed = sorted(k for section in ("vqvae", "training") for k in plan[section]
                             if saved.get(section, {}).get(k) != plan[section][k])
            changed += [k for k in ("data", "labels") if saved.get(k) != plan[k]]
            raise SkinaugError(f"{out} holds a sweep with other options ({', '.join(changed) or 'format'} differ): "
                               "repeat its options, pass {overwrite=True}, or choose another {out}")
    elif any(out.iterdir()):
        raise SkinaugError(f"{out} exists and is not a sweep folder (no {PLAN}): choose another {{out}}")
    else:
        write_json(path, plan)


def finished_rows(out) -> list[dict]:
    rows = [read_json(path) for path in Path(out).glob(f"K*_D*/{ROW}")]
    return sorted(rows, key=lambda row: (row["codebook_size"], row["code_dim"]))


def run_sweep(data, out, *, labels=None, codebook_sizes: list[int], code_dims: list[int], base: VQVAEConfig,
              options: TrainOptions, encode_batch_size: int = 64, overwrite: bool = False) -> list[dict]:
    """Trains, encodes and tabulates every (K, D) not finished yet; returns all finished rows."""
    out = Path(out)
    # a rerun continues; under --overwrite the new sweep grows beside the earlier one and replaces it when done
    claim = claim_output(out, kind=SWEEP_FOLDER, inputs=(data, labels), overwrite=overwrite, resume=not overwrite)
    with claim:
        return _sweep_into(claim.work, out, data, labels, codebook_sizes, code_dims, base, options, encode_batch_size)


def _sweep_into(work: Path, out: Path, data, labels, codebook_sizes, code_dims, base, options, encode_batch_size) -> list[dict]:
    work.mkdir(parents=True, exist_ok=True)
    _check_plan(work, _plan(data, labels, base, options))
    columns = {"image_col": options.image_col, "label_col": options.label_col, "group_col": options.group_col}
    pairs = [(k, d) for k in codebook_sizes for d in code_dims]
    for number, (codebook_size, code_dim) in enumerate(pairs, start=1):
        folder = config_dir(work, codebook_size, code_dim)
        if (folder / ROW).is_file():
            log(f"[{number}/{len(pairs)}] K={codebook_size}, D={code_dim}: finished earlier, skipped")
            continue
        started = time.perf_counter()
        model_dir = ModelDir(folder)
        if not model_dir.exists():
            resume = (model_dir.train_dir / CHECKPOINT).is_file()
            log(f"[{number}/{len(pairs)}] K={codebook_size}, D={code_dim}: " + ("resuming" if resume else "training"))
            # a folder cut off before its first checkpoint holds nothing worth keeping: start it again
            train_vqvae(data, folder, labels=labels, model_config=replace(base, codebook_size=codebook_size, code_dim=code_dim),
                        options=replace(options), resume=resume, overwrite=not resume)
        config = model_dir.config()
        # encoded beside the model directory (no command writes inside a model it reads), then moved into it: the
        # sweep's own configuration folder, which it owns
        encoded = folder.parent / f".{folder.name}.codes.h5"
        stats = encode_dataset(data, encoded, model=folder, labels=labels, device=options.device,
                               batch_size=encode_batch_size, overwrite=True, strict=options.strict, workers=options.workers,
                               **columns)
        os.replace(encoded, folder / "codes.h5")
        row = {
            "codebook_size": codebook_size, "code_dim": code_dim,
            "used_codes_top": stats.get("used_codes_top"), "used_codes_bottom": stats.get("used_codes_bottom"),
            "co_occurring_pairs": stats.get("co_occurring_pairs"),
            "perplexity_top": stats.get("perplexity_top"), "perplexity_bottom": stats.get("perplexity_bottom"),
            "val_mse": config.get("metrics", {}).get("val_mse"), "mse": stats["mse"], "epochs": options.epochs,
            "train_seconds": round(time.perf_counter() - started, 1), "model": str(config_dir(out, codebook_size, code_dim)),
        }
        write_json(folder / ROW, row)  # the mark of a finished configuration
    rows = finished_rows(work)
    write_text(work / "sweep.csv", _csv(rows))
    write_json(work / "sweep.json", {"rows": rows})
    return rows


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS} for row in rows)
    return buffer.getvalue()


def print_sweep_table(rows: list[dict]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    table = Table(title="latent size sweep (Table 2 columns)")
    for column in ("K", "D", "used top codes", "used bottom codes", "co-occurring pairs", "val MSE", "MSE (all data)"):
        table.add_column(column, justify="right")

    def used(row, level):
        value = row.get(f"used_codes_{level}")
        return "-" if value is None else f"{value}/{row['codebook_size']}"

    for row in rows:
        pairs = row.get("co_occurring_pairs")
        val_mse = row.get("val_mse")
        table.add_row(str(row["codebook_size"]), str(row["code_dim"]), used(row, "top"), used(row, "bottom"),
                      "-" if pairs is None else f"{pairs:,}", "-" if val_mse is None else f"{val_mse:.5f}", f"{row['mse']:.5f}")
    Console(file=sys.stderr, width=None if sys.stderr.isatty() else 140).print(table)
