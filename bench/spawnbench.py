"""Shared by the benchmark scripts: start a workload process the way a Wavelet does (its
listening socket handed over as fd 3, LISTEN_FDS=1) and time it to its first response."""
import os
import socket
import subprocess
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def spawn_to_response(argv, first_byte_only=False):
    """Seconds from spawning `argv` to its first response byte (`first_byte_only`) or to the
    complete response. The request is sent at once and waits in the socket's backlog."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    # The child must find the socket at fd 3: put it there in the parent and pass it on.
    if listener.fileno() != 3:
        os.dup2(listener.fileno(), 3)
    env = dict(os.environ, LISTEN_FDS="1", WAVELINK_LOG="warn")
    started = time.perf_counter()
    child = subprocess.Popen(argv, pass_fds=(3,), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with socket.create_connection(listener.getsockname()) as client:
            client.sendall(REQUEST)
            response = client.recv(65536)
            while not first_byte_only:
                chunk = client.recv(65536)
                if not chunk:
                    break
                response += chunk
            elapsed = time.perf_counter() - started
    finally:
        if listener.fileno() != 3:
            os.close(3)
        listener.close()
        child.kill()
        child.wait()
    if not response.startswith(b"HTTP/1.1 200"):
        sys.exit(f"unexpected response: {response[:80]!r}")
    return elapsed
