"""Implicit Kerberos credentials of real users against the system daemon (root): the ticket a user got with
kinit is used by that user's broker, never read by root; a user without one gets the documented 401; a
helper with TokenFlags.NETWORK authenticates with the helper's ticket, not the owner's."""

from __future__ import annotations


import pytest

from .servers.kerberos import KerberosRealm, NegotiateServer
from .test_security import daemon, download_job, run_as, users, world  # noqa: F401  (fixtures here too)
from .users import RealUser, owned_folder

pytestmark = pytest.mark.root

BODY = b"kerberos for users\n"


@pytest.fixture(scope="module")
def realm(kerberos: tuple[KerberosRealm, NegotiateServer], users: dict[str, RealUser]) -> KerberosRealm:  # noqa: F811
    """alice has a ticket (kinit as alice), bob and the admin have none."""
    realm, web = kerberos
    (web.root / "negotiate" / "u").write_bytes(BODY)
    alice = users["alice"]
    principal = realm.add_user(alice.name, alice.password)
    realm.kinit(principal, alice.password, user=alice.name)
    return realm


def test_kinit_ticket_is_used_by_its_owner_only(users, world, daemon, kerberos, realm) -> None:  # noqa: F811
    alice, bob = users["alice"], users["bob"]
    web = kerberos[1]
    mine = owned_folder(world / "alice_krb", alice, 0o700)
    done = run_as(alice, daemon, download_job(web.url("negotiate/u"), mine / "u", flags=0))
    assert done["state"] == "TRANSFERRED", done
    assert (mine / "u").read_bytes() == BODY and web.users("/negotiate/u")[-1] == f"{alice.name}@OPENBITS.TEST"
    theirs = owned_folder(world / "bob_krb", bob, 0o700)
    refused = run_as(bob, daemon, download_job(web.url("negotiate/u"), theirs / "u", flags=0) + """
    out(error=job.error.name, description=job.error.description)
    """)
    assert refused["error"] == "BG_E_HTTP_ERROR_401", refused
    assert f"no usable Kerberos ticket of {bob.name}" in refused["description"]
    assert f"run kinit as {bob.name}" in refused["description"]
    assert not (theirs / "u").exists()


def test_helper_with_network_uses_the_helpers_ticket(users, world, daemon, kerberos, realm) -> None:  # noqa: F811
    alice, bob = users["alice"], users["bob"]
    web = kerberos[1]
    theirs = owned_folder(world / "bob_helped_krb", bob, 0o700)
    helped = run_as(bob, daemon, download_job(web.url("negotiate/u"), theirs / "h", helper=alice.name,
                                              password=alice.password, flags=2))
    assert helped["state"] == "TRANSFERRED", helped
    assert web.users("/negotiate/u")[-1] == f"{alice.name}@OPENBITS.TEST"
    assert (theirs / "h").read_bytes() == BODY and (theirs / "h").stat().st_uid == bob.uid
    local_only = run_as(bob, daemon, download_job(web.url("negotiate/u"), theirs / "l", helper=alice.name,
                                                  password=alice.password, flags=0))
    assert local_only["error"] == "BG_E_HTTP_ERROR_401", local_only  # without NETWORK: bob's (no) ticket
