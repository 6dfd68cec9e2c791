"""/v1 routes of IBitsTokenOptions, SetCredentials/RemoveCredentials, the client certificate and the PAM logon check.

No answer ever carries a password or a passphrase; the helper's identity is reported as uid and user name only.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from ..core.certificates import CertificateChoice
from ..errors import BitsError, ErrorCode
from ..identity import Identity
from ..enums import AuthScheme, AuthTarget
from ..identity.tokens import TICKET_LIFETIME, Credential
from ..schema.models import (
    ClientCertificateRequest,
    CredentialsKey,
    CredentialsRequest,
    HelperTokenRequest,
    HelperTokenUser,
    LogonRequest,
    LogonResult,
    TokenFlagsBody,
    TokenTicket,
)
from .request import CERTIFICATES, TOKENS, caller, parse, respond, respond_job

token_routes = web.RouteTableDef()
_JOB = "/v1/jobs/{job:[^/]+}"


def _user(identity: Identity | None) -> HelperTokenUser:
    return HelperTokenUser(uid=None if identity is None else identity.uid,
                           user=None if identity is None else identity.name)


@token_routes.put(_JOB + "/helper-token")
async def set_helper_token(request: web.Request) -> web.Response:
    body = await parse(request, HelperTokenRequest)
    tokens, who, ref = request.app[TOKENS], caller(request), request.match_info["job"]
    if body.ticket is not None and body.username is None and body.password is None:
        job = await tokens.set_from_ticket(who, ref, body.ticket)
    elif body.username is not None and body.password is not None and body.ticket is None:
        job = await tokens.set_from_password(who, ref, body.username, body.password)
    elif body.username is None and body.password is None and body.ticket is None:
        job = await tokens.set_from_caller(who, ref)
    else:
        raise BitsError(ErrorCode.E_INVALIDARG, "give {} (you), {username, password} or {ticket}")
    return respond(_user(tokens.service.tokens.helper(job.id)))


@token_routes.delete(_JOB + "/helper-token")
async def clear_helper_token(request: web.Request) -> web.Response:
    await request.app[TOKENS].clear(caller(request), request.match_info["job"])
    return respond(_user(None))


@token_routes.get(_JOB + "/helper-token")
async def get_helper_token_user(request: web.Request) -> web.Response:
    _, helper = request.app[TOKENS].helper_of(caller(request), request.match_info["job"])
    return respond(_user(helper))


@token_routes.get(_JOB + "/helper-token-flags")
async def get_helper_token_flags(request: web.Request) -> web.Response:
    job, _ = request.app[TOKENS].helper_of(caller(request), request.match_info["job"])
    return respond(TokenFlagsBody(flags=job.helper_token_flags))


@token_routes.put(_JOB + "/helper-token-flags")
async def set_helper_token_flags(request: web.Request) -> web.Response:
    body = await parse(request, TokenFlagsBody)
    job = await request.app[TOKENS].set_flags(caller(request), request.match_info["job"], body.flags)
    return respond(TokenFlagsBody(flags=job.helper_token_flags))


@token_routes.post(_JOB + "/token-ticket")
async def token_ticket(request: web.Request) -> web.Response:
    ticket = request.app[TOKENS].issue_ticket(caller(request), request.match_info["job"])
    return respond(TokenTicket(ticket=ticket, expires_in=TICKET_LIFETIME), status=201)


@token_routes.put(_JOB + "/credentials")
async def set_credentials(request: web.Request) -> web.Response:
    body = await parse(request, CredentialsRequest)
    job = await request.app[TOKENS].set_credentials(caller(request), request.match_info["job"], body.target,
                                                    body.scheme, Credential(body.username, body.password))
    return respond_job(request, job)


def _auth_pair(request: web.Request) -> tuple[AuthTarget, AuthScheme]:
    """RemoveCredentials' target and scheme, from the query string."""
    try:
        key = CredentialsKey.model_validate(dict(request.query))
    except ValidationError:
        raise BitsError(ErrorCode.E_INVALIDARG, "give target (SERVER or PROXY) and scheme (BASIC, DIGEST, NTLM, "
                        "NEGOTIATE or PASSPORT) as query parameters") from None
    return key.target, key.scheme


@token_routes.delete(_JOB + "/credentials")
async def remove_credentials(request: web.Request) -> web.Response:
    target, scheme = _auth_pair(request)
    job = await request.app[TOKENS].remove_credentials(caller(request), request.match_info["job"], target, scheme)
    return respond_job(request, job)


@token_routes.put(_JOB + "/client-certificate")
async def set_client_certificate(request: web.Request) -> web.Response:
    body = await parse(request, ClientCertificateRequest)
    choice = CertificateChoice(body.path, body.store, body.thumbprint, body.subject)
    job = await request.app[CERTIFICATES].set_client_certificate(caller(request), request.match_info["job"], choice,
                                                                 body.passphrase)
    return respond_job(request, job)


@token_routes.delete(_JOB + "/client-certificate")
async def remove_client_certificate(request: web.Request) -> web.Response:
    job = await request.app[CERTIFICATES].remove_client_certificate(caller(request), request.match_info["job"])
    return respond_job(request, job)


@token_routes.post("/v1/logon")
async def logon(request: web.Request) -> web.Response:
    """LogonUser: check a password with PAM (rate-limited per caller); nothing is kept."""
    body = await parse(request, LogonRequest)
    identity = await request.app[TOKENS].logons.logon(caller(request), body.username, body.password)
    return respond(LogonResult(uid=identity.uid, user=identity.name))
