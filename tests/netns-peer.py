#!/usr/bin/env python3
"""Test peer for the network-namespace tests (a stand-in for pods and hosts).

  serve PORT TEXT   answer every TCP connection on 0.0.0.0:PORT with TEXT
  http PORT TEXT    answer every HTTP request on 0.0.0.0:PORT with 200 and TEXT
  ask HOST PORT     connect, print the answer (or ERR <why>), exit 0
  get URL [H: V]    HTTP GET (with one header), print the status and the body's first line
  body URL          HTTP GET, print the whole body
  sniff IFACE FILE  append the TCP payload of every IPv4 frame seen on IFACE to FILE
"""
import http.server
import socket
import socketserver
import sys
import threading
import urllib.request


def serve(port, text):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn, text), daemon=True).start()


def answer(conn, text):
    with conn:
        conn.sendall(text.encode() + b"\n")


def ask(host, port):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.settimeout(2)
            print(s.recv(256).decode().strip())
    except OSError as err:
        print(f"ERR {err}")


def serve_http(port, text):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (text + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self):
            # HTTPServer looks up its own FQDN here; in a namespace with no DNS that
            # waits for the resolver to time out.
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = "peer", self.server_address[1]

    server = Server(("0.0.0.0", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


def get(url, header=None):
    req = urllib.request.Request(url)
    if header:
        name, value = header.split(":", 1)
        req.add_header(name.strip(), value.strip())
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            print(resp.status, resp.read().decode().splitlines()[0])
    except urllib.error.HTTPError as err:
        print(err.code, "-")
    except OSError as err:
        print(f"ERR {err}")


def body(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            sys.stdout.write(resp.read().decode())
    except OSError as err:
        print(f"ERR {err}")


def sniff(iface, path):
    # A raw packet socket: what crosses the link, as a capture tool would see it.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind((iface, 0))
    print("ready", flush=True)
    with open(path, "ab", buffering=0) as out:
        while True:
            frame = sock.recv(65535)
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            if ip[9] != 6:  # TCP only
                continue
            header = (ip[0] & 0x0F) * 4
            total = int.from_bytes(ip[2:4], "big")
            tcp = ip[header:total]
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                out.write(payload)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif mode == "http":
        serve_http(int(sys.argv[2]), sys.argv[3])
    elif mode == "body":
        body(sys.argv[2])
    elif mode == "sniff":
        sniff(sys.argv[2], sys.argv[3])
    elif mode == "ask":
        ask(sys.argv[2], int(sys.argv[3]))
    else:
        get(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
