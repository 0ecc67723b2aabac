"""The web page at `GET /ui` on the HTTP gateway (`clip_server.gateway.ui.routes`, files in `assets/`)."""
