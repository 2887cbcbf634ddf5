#!/usr/bin/env python3
"""Test peer for the capture tests, run inside network namespaces.

  peer.py serve PORT TEXT   answer every TCP connection on 0.0.0.0:PORT with TEXT
  peer.py ask HOST PORT     connect, print the answer (or ERR <why>), exit 0
"""
import socket
import sys
import threading


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


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    else:
        ask(sys.argv[2], int(sys.argv[3]))
