"""`skinaug models`: the models skinaug can find, and which one a command uses without --model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import JsonOpt


app = typer.Typer()


@app.command("models")
def models(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        metavar="MODEL_DIR", help="Model directories, or folders holding model directories, to list besides the shipped ones.",
        show_default=False)] = None,
    json_: JsonOpt = False,
):
    """List the shipped models, $SKINAUG_MODEL and any model directories given: name, image size, classes,
    licence, fingerprint. The one marked default is what commands use when --model is not given.

    Example: skinaug models models/ --json
    """
    from ..storage.modeldir import list_models

    rows = list_models(paths or [])
    if json_:
        print(json.dumps(rows, indent=None))
        return
    _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("name", "size", "classes", "licence", "fingerprint", "priors", "path"):
        table.add_column(column, overflow="fold")
    for row in rows:
        name = row["name"] + (" (default)" if row["default"] else "") + (" [shipped]" if row["shipped"] else "")
        name += f" [{row['arch']} baseline]" if row.get("arch") else ""
        table.add_row(name, f"{row['image_size']}px", ", ".join(row["classes"]), row["licence"], row["fingerprint"],
                      ",".join(row["priors"]) or "none", row["path"])
    Console(soft_wrap=False, width=200).print(table) if rows else print("no models found", flush=True)
