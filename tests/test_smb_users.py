"""SMB with implicit Kerberos credentials of real users against the system daemon (root): a job without
credentials logs on to Samba with the ticket its owner got with kinit, in the owner's broker (root never reads
it); a user without a ticket gets the documented logon error; an upload goes the same way."""

from __future__ import annotations

import os

import pytest

from .servers.kerberos import REALM, KerberosRealm, NegotiateServer
from .servers.samba import SHARE, SambaServer
from .test_security import daemon, download_job, run_as, users, world  # noqa: F401  (fixtures here too)
from .users import RealUser, owned_folder

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def ticket(kerberos: tuple[KerberosRealm, NegotiateServer], users: dict[str, RealUser]) -> str:  # noqa: F811
    """alice has a ticket (kinit as alice); bob has none. Returns alice's principal."""
    realm, alice = kerberos[0], users["alice"]
    principal = f"{alice.name}@{REALM}"
    try:
        realm.add_user(alice.name, alice.password)
    except RuntimeError as exc:  # tests/test_negotiate_users.py made it in this run
        if "already exists" not in str(exc):
            raise
    realm.kinit(principal, alice.password, user=alice.name)
    return principal


def test_kinit_ticket_logs_on_to_the_share(users, world, daemon, samba_kerberos: SambaServer,  # noqa: F811
                                           ticket: str) -> None:
    alice, bob = users["alice"], users["bob"]
    data = os.urandom(200_000)
    (samba_kerberos.root / "k.bin").write_bytes(data)
    url = f"smb://localhost:{samba_kerberos.port}/{SHARE}/k.bin"
    mine = owned_folder(world / "alice_smb", alice, 0o700)
    done = run_as(alice, daemon, download_job(url, mine / "k", flags=0))
    assert done["state"] == "TRANSFERRED", done
    assert (mine / "k").read_bytes() == data
    theirs = owned_folder(world / "bob_smb", bob, 0o700)
    refused = run_as(bob, daemon, download_job(url, theirs / "k", flags=0) + """
    out(error=job.error.name, description=job.error.description)
    """)
    assert refused["error"] == "ERROR_LOGON_FAILURE", refused
    assert f"no usable Kerberos ticket of {bob.name}" in refused["description"], refused
    # smbd checks a write against the logon's SIDs (alice's), not the share's forced user: a folder for all
    drop = samba_kerberos.root / "drop"
    drop.mkdir(exist_ok=True)
    drop.chmod(0o777)
    (mine / "up.bin").write_bytes(data[::-1])
    uploaded = run_as(alice, daemon, f"""
    from openbits.enums import JobType
    job = m.create_job("smb-up", JobType.UPLOAD)
    job.add_file("smb://localhost:{samba_kerberos.port}/{SHARE}/drop/from-alice.bin", {str(mine / "up.bin")!r})
    job.resume()
    state = job.wait(30)
    if state == JobState.TRANSFERRED:
        job.complete()
    out(state=state.name, error=job.error and job.error.description)
    """)
    assert uploaded["state"] == "TRANSFERRED", uploaded
    assert (drop / "from-alice.bin").read_bytes() == data[::-1]
