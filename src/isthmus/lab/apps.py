"""Real services for lab sandboxes, run by the lab kubelet in place of the name server:

  nginx NAME HOST:PORT DIR      Debian's nginx on port 80, proxying to HOST:PORT (the service the pod
                                `uses`), adding `X-Served-By: NAME`; its files in DIR
  leonardo NAME [PORT]          the seeds' CMS as a small web app on PORT (8000): each request is a session
                                written to PostgreSQL (the first answering of $LEONARDO_DB, comma-separated
                                addresses) and answered with what the database then holds
  postgresql NAME ADDRESS DIR   Debian's PostgreSQL, its cluster in DIR (made on first start, trusting
                                every peer: a lab), listening on ADDRESS:5432

Each replaces this process (exec) or serves in it until killed with its sandbox.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SESSIONS = "CREATE TABLE IF NOT EXISTS sessions (id serial, pod text, at timestamptz DEFAULT now())"
NGINX = """daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 80;
        listen [::]:80;
        location / {{
            proxy_pass http://{upstream};
            proxy_connect_timeout 2s;
            add_header X-Served-By {name} always;
        }}
    }}
}}
"""


def nginx(name: str, upstream: str, directory: str) -> None:
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        sys.exit("nginx is not installed (Debian package nginx; scripts/bootstrap installs it)")
    work = Path(directory)
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX.format(dir=work, upstream=upstream, name=name))
    os.execv(binary, [binary, "-c", str(conf), "-p", str(work)])


def leonardo(name: str, port: int = 8000) -> None:
    import psycopg  # a lab app's own need, not the control plane's

    databases = [d for d in os.environ.get("LEONARDO_DB", "").split(",") if d]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer: dict[str, object] = {"served_by": name}
            code = 200
            for host in databases:
                try:
                    with psycopg.connect(
                        host=host, user="postgres", dbname="postgres", connect_timeout=2
                    ) as db:
                        db.execute(SESSIONS)
                        db.execute("INSERT INTO sessions (pod) VALUES (%s)", (name,))
                        count = db.execute("SELECT count(*) FROM sessions").fetchone()
                        answer |= {"database": host, "sessions": count[0] if count else 0}
                    break
                except psycopg.Error as exc:
                    answer["error"] = f"{host}: {exc}".strip()
            else:
                code = 503
            body = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    class DualStack(ThreadingHTTPServer):
        address_family = socket.AF_INET6  # and IPv4, as mapped addresses (IPV6_V6ONLY is off)

    DualStack(("::", port), Handler).serve_forever()


def postgresql(name: str, address: str, directory: str) -> None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        sys.exit("PostgreSQL is not installed (Debian package postgresql; scripts/bootstrap installs it)")
    bin_dir, data = Path(found[-1]).parent, Path(directory)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        shutil.chown(data, "postgres", "postgres")
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
    settings = [f"listen_addresses={address}", f"unix_socket_directories={data}", f"cluster_name={name}"]
    argv = [
        *as_postgres,
        str(bin_dir / "postgres"),
        "-D",
        str(data),
        *(a for s in settings for a in ("-c", s)),
    ]
    os.execvp(argv[0], argv)


def main(argv: list[str]) -> None:
    kind, name, *rest = argv
    if kind == "nginx":
        nginx(name, rest[0], rest[1])
    elif kind == "leonardo":
        leonardo(name, int(rest[0]) if rest else 8000)
    elif kind == "postgresql":
        postgresql(name, rest[0], rest[1])
    else:
        sys.exit(f"unknown lab app {kind!r}: nginx, leonardo or postgresql")


if __name__ == "__main__":
    main(sys.argv[1:])
