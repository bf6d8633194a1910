#!/usr/bin/env python3
"""
A CA check next to a transient identity: the same page shows both verdicts.

    python contrib/ca_check.py --tls-cafile members-ca.pem

The server requests a client certificate and accepts any, as
allow_transient_certs=True makes it do. For each certificate the
application gets two separate facts:

- TLS_CLIENT_HASH, the SHA-256 fingerprint: a stable identity for any
  certificate, self-signed included (trust on first use);
- TLS_CLIENT_AUTHORISED, 1 when the whole chain verifies against the CA in
  --tls-cafile and 0 otherwise (self-signed, another issuer, expired).

Routes:
    /           both facts for the certificate presented
    /members    only for certificates the CA signed: 60 without one, 61 otherwise

Without --tls-cafile every certificate is transient, so /members responds 61.
"""

from __future__ import annotations

import argparse

from jetforce import GeminiServer, JetforceApplication, Request, Response, Status


def build_app() -> JetforceApplication:
    app = JetforceApplication()

    @app.route("")
    def index(request: Request) -> Response:
        environ = request.environ
        lines = ["# Certificate check\n\n"]
        if environ.get("TLS_CLIENT_HASH") is None:
            lines.append("You presented no client certificate.\n")
        else:
            authorised = environ["TLS_CLIENT_AUTHORISED"] == 1
            verdict = "yes" if authorised else "no, a transient certificate"
            lines += [
                "## Identity (any certificate)\n\n",
                f"* Fingerprint: {environ['TLS_CLIENT_HASH']}\n",
                f"* Common name: {environ['REMOTE_USER'] or '(none)'}\n",
                f"* Valid from {environ['TLS_CLIENT_NOT_BEFORE']} to {environ['TLS_CLIENT_NOT_AFTER']}\n\n",
                "## CA check\n\n",
                f"* Signed by the server's CA: {verdict} (TLS_CLIENT_AUTHORISED={environ['TLS_CLIENT_AUTHORISED']})\n",
            ]
        lines.append("\n=> /members Members only\n")
        return Response(Status.SUCCESS, "text/gemini", "".join(lines))

    @app.route("/members")
    def members(request: Request) -> Response:
        environ = request.environ
        if environ.get("TLS_CLIENT_HASH") is None:
            return Response(Status.CLIENT_CERTIFICATE_REQUIRED, "Members present a certificate from the members' CA")
        if environ["TLS_CLIENT_AUTHORISED"] != 1:
            return Response(Status.CERTIFICATE_NOT_AUTHORISED, "This certificate is not signed by the members' CA")
        body = f"# Members\n\nWelcome, {environ['REMOTE_USER'] or 'member'}.\n"
        return Response(Status.SUCCESS, "text/gemini", body)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a page that shows a CA check next to a transient identity.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=1965, help="TCP port; 0 picks a free one (default: 1965)")
    parser.add_argument("--hostname", default="localhost", help="hostname in request URLs (default: localhost)")
    parser.add_argument("--tls-cafile", help="CA certificates in PEM that member certificates are verified against")
    args = parser.parse_args()

    server = GeminiServer(
        build_app(),
        host=args.host,
        port=args.port,
        hostname=args.hostname,
        cafile=args.tls_cafile,
        allow_transient_certs=True,
    )
    server.run()


if __name__ == "__main__":
    main()
