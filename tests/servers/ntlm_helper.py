"""Squid's NTLM authenticator, with pyspnego's NTLM acceptor: run by Squid (`auth_param ntlm program`), one
handshake at a time (a stateful helper), checking the accounts of the file NTLM_USER_FILE names
(DOMAIN:user:password lines).

Squid sends `YR <type 1>` to start and `KK <type 3>` to finish; the helper answers `TT <type 2>`, then
`AF <user>` (taken) or `NA <reason>` (refused), `BH <reason>` for what it cannot read.
"""

from __future__ import annotations

import base64
import sys
from typing import Any


def main() -> None:
    import spnego

    context: Any = None
    for line in sys.stdin:
        verb, _, token = line.strip().partition(" ")
        try:
            if verb == "YR":
                context = spnego.server(protocol="ntlm")
            if verb not in ("YR", "KK") or context is None:
                answer = "BH unexpected request"
            else:
                out = context.step(base64.b64decode(token))
                if context.complete:
                    answer, context = f"AF {context.client_principal.split(chr(92))[-1]}", None
                else:
                    answer = f"TT {base64.b64encode(out or b'').decode()}"
        except Exception as exc:  # noqa: BLE001 - every refusal is told to Squid as such
            answer, context = f"NA {type(exc).__name__}", None
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
