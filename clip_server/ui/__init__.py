"""The web page at `GET /ui` on the HTTP gateway (`clip_server.ui.routes`, files in `assets/`)."""
