from jetforce import JetforceApplication, Response, Status

from .certs import self_signed
from .harness import ClientTLSOptions, connect_memory, make_memory_server


def test_memory_harness_round_trip():
    app = JetforceApplication()

    @app.route("")
    def index(request):
        return Response(Status.SUCCESS, "text/gemini", request.environ.get("TLS_CLIENT_HASH", "none"))

    server = make_memory_server(app, allow_transient_certs=True)
    connection = connect_memory(server, b"gemini://localhost/\r\n", ClientTLSOptions(self_signed()))
    assert connection.client.header == b"20 text/gemini"
    assert connection.client.body.startswith(b"SHA256:")
    assert connection.client.close_notify_received
    assert connection.client.closed
    assert len(server.access_lines) == 1
