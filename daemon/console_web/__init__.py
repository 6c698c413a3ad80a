"""igrt-console: serves the browser treatment console (static files) to the room's browsers.

    igrt-console --config /etc/igrt/console.json      # python -m daemon.console_web

A service of its own (systemd/igrt-console.service), not part of igrtd: it
serves the page (static/), the MQTT client library (node_modules/, installed
by `make setup`) and one JSON document naming the broker (config.json). The
page talks to igrtd only through the broker, with commands signed in the
browser (docs/console-api.md). This package imports nothing of igrtd's
motion, console or device code (import-linter contract in pyproject.toml).
"""
