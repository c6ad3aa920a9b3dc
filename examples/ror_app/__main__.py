"""python -m examples.ror_app [--host 127.0.0.1] [--port 5001]: the development server."""
from __future__ import annotations

import argparse
import logging
import sys
from urllib.parse import urlsplit

from examples.ror_app import ConfigError, create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.ror_app",
                                     description="Application ROR de démonstration (client OpenID Connect du portail).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, help="par défaut, celui de ROR_APP_BASE_URL (5001)")
    args = parser.parse_args(argv)
    try:
        app = create_app()
    except ConfigError as exc:
        print(f"Erreur : {exc}", file=sys.stderr)
        return 1
    settings = app.extensions["ror_app"].settings
    port = args.port or urlsplit(settings.base_url).port or 5001
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ror_app %(levelname)s %(message)s")
    print(f"Application ROR de démonstration : {settings.base_url} (écoute sur http://{args.host}:{port}, "
          f"portail {settings.issuer}, client {settings.client_id})", flush=True)
    app.run(host=args.host, port=port, debug=False, use_reloader=False, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
