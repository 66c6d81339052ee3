"""``clinfl pki``: the federation's CA, certificates and roster (run at the coordinator).

No command here makes or receives a site's private key: sites make their own keys
(``clinfl site init``) and send only a ``site-request.json``, which ``pki admit`` checks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clinfl.cli.errors import cli_errors
from clinfl.pki import admit_site, init_pki, load_pki_roster, remove_site
from clinfl.roster import ROSTER_FILE, Roster


def init(
    out: Annotated[
        Path, typer.Option(help="New folder for the CA, certificates, manifest and roster.")
    ],
    host: Annotated[
        list[str] | None,
        typer.Option(help="Host name or IP the sites reach the coordinator at (repeatable)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days.")] = 825,
) -> None:
    """Create a CA, the coordinator's TLS certificate, the manifest and an empty roster."""
    with cli_errors(as_json=False):
        hosts = host or ["localhost", "127.0.0.1"]
        manifest = init_pki(out, hosts=hosts, days=days)
        console = Console()
        console.print(f"PKI written to {out} (private keys ca.key, coordinator.key: mode 0600)")
        console.print(f"coordinator hosts: {', '.join(hosts)}")
        console.print(f"CA fingerprint (SHA-256): {manifest['ca_sha256']}")


def roster_table(roster: Roster, *, title: str = "roster", this_site: str | None = None) -> Table:
    """The roster's members and their keys (shortened) as a table."""
    table = Table(title=f"{title}: fingerprint {roster.fingerprint}")
    for column in ("site", "signing key", "node key (SHA-256)", "TLS certificate (SHA-256)"):
        table.add_column(column)
    for member in roster.members:
        node = hashlib.sha256(member.node_public_key.encode()).hexdigest()
        name = f"{member.site} (this site)" if member.site == this_site else member.site
        table.add_row(
            name,
            member.signing_public_key.hex()[:16] + "...",
            node[:16] + "...",
            member.tls_cert_sha256[:16] + "...",
        )
    return table


def _roster_json(roster: Roster) -> str:
    return json.dumps(
        {"fingerprint": roster.fingerprint, "sha256": roster.digest.hex(), "sites": roster.names}
    )


def admit(
    request: Annotated[
        Path, typer.Argument(help="The site-request.json a site's `clinfl site init` wrote.")
    ],
    pki: Annotated[Path, typer.Option(help="The folder `clinfl pki init` wrote.")],
    fingerprint: Annotated[
        str | None,
        typer.Option(help="The request's fingerprint as the site read it to you (checked)."),
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Give a site already in the roster new keys.")
    ] = False,
    days: Annotated[int, typer.Option(help="Validity of the certificate in days.")] = 825,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check a site's request, sign its TLS certificate and add its public keys to the roster."""
    with cli_errors(as_json=as_json):
        done = admit_site(pki, request, replace=replace, expect_fingerprint=fingerprint, days=days)
        site = done.member.site
        if as_json:
            document = json.loads(_roster_json(done.roster))
            document.update(site=site, certificate=str(done.certificate), replaced=done.replaced)
            print(json.dumps(document, indent=2))
            return
        console = Console()
        console.print(
            f"{site} {'re-keyed' if done.replaced else 'admitted'}: certificate "
            f"{done.certificate}; roster {pki / ROSTER_FILE} now lists {len(done.roster.members)} "
            "site(s)"
        )
        console.print(roster_table(done.roster))
        console.print(
            f"Hand back to {site}: {done.certificate}, {pki / 'ca.crt'} and "
            f"{pki / ROSTER_FILE}. Every member must run `clinfl site trust` with the new "
            "roster.json after comparing its fingerprint out of band with the other hospitals; "
            "until then they refuse runs over it."
        )


def remove(
    site: Annotated[str, typer.Argument(help="The member to take out of the roster.")],
    pki: Annotated[Path, typer.Option(help="The folder `clinfl pki init` wrote.")],
) -> None:
    """Take a site out of the roster (every remaining member must trust the new roster)."""
    with cli_errors(as_json=False):
        roster = remove_site(pki, site)
        console = Console()
        console.print(f"{site} removed from {pki / ROSTER_FILE}")
        console.print(roster_table(roster))
        console.print(
            "Send the new roster.json to every remaining member; each must run "
            "`clinfl site trust` with it."
        )


def show_roster(
    pki: Annotated[Path, typer.Option(help="The folder `clinfl pki init` wrote.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """Show the roster's members and its fingerprint (read it out to the hospitals)."""
    with cli_errors(as_json=as_json):
        roster = load_pki_roster(pki)
        if as_json:
            print(_roster_json(roster))
        else:
            Console().print(roster_table(roster))
