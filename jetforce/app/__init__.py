"""Application framework: routing, the static file and CGI server, virtual hosts."""
