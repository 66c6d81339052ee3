"""``clinfl pki``: the federation's certificates and keys (run at the coordinator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clinfl.cli.errors import cli_errors
from clinfl.pki import add_site, init_pki

pki_app = typer.Typer(help="Certificates and keys of the federation.", no_args_is_help=True)


@pki_app.command("init")
def init(
    out: Annotated[Path, typer.Option(help="New folder for the CA, certificates and manifest.")],
    host: Annotated[
        list[str] | None,
        typer.Option(help="Host name or IP the sites reach the coordinator at (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days.")] = 825,
) -> None:
    """Create a CA, the coordinator's TLS certificate and the federation manifest."""
    with cli_errors(as_json=False):
        hosts = host or ["localhost", "127.0.0.1"]
        manifest = init_pki(out, hosts=hosts, days=days)
        console = Console()
        console.print(f"PKI written to {out} (private keys ca.key, coordinator.key: mode 0600)")
        console.print(f"coordinator hosts: {', '.join(hosts)}")
        console.print(f"CA fingerprint (SHA-256): {manifest['ca_sha256']}")


@pki_app.command("add-site")
def add_site_command(
    name: Annotated[str, typer.Argument(help="The site's pseudonym, e.g. site-1.")],
    pki: Annotated[Path, typer.Option(help="The folder `clinfl pki init` wrote.")],
    days: Annotated[int, typer.Option(help="Validity of the certificate in days.")] = 825,
    as_json: Annotated[bool, typer.Option("--json", help="Print the paths as JSON.")] = False,
) -> None:
    """Create a site's TLS client certificate, Flower node key and Ed25519 signing key."""
    with cli_errors(as_json=as_json):
        files = add_site(pki, name, days=days)
        if as_json:
            print(json.dumps({k: str(v) for k, v in files.__dict__.items()}, indent=2))
            return
        Console().print(
            f"site {name}: keys and certificate in {files.folder} (private keys mode 0600). "
            "Copy that folder to the site over a secure channel; the manifest holds only the "
            "public parts."
        )
