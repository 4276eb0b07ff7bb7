"""A socket guard for tests/test_offline.py, loaded into every Python process that test starts
(through PYTHONPATH): a name look-up or connection to anything but this machine is refused and
written, with its stack, to the file named by NETGUARD_LOG."""
import os
import socket
import traceback

LOG = os.environ.get("NETGUARD_LOG")
LOOPBACK = {None, "", "localhost", "::1", "0.0.0.0", "::"}


def is_loopback(host):
    if isinstance(host, bytes):
        host = host.decode()
    return host in LOOPBACK or (isinstance(host, str) and host.startswith("127."))


def refuse(kind, target):
    if LOG:
        with open(LOG, "a", encoding="utf-8") as log:
            stack = "".join(traceback.format_stack()[:-2])
            log.write(f"pid {os.getpid()}: {kind} {target!r}\n{stack}\n")
    raise OSError(f"netguard: {kind} {target!r} refused (the test runs offline)")


real_getaddrinfo = socket.getaddrinfo
real_connect = socket.socket.connect
real_connect_ex = socket.socket.connect_ex
real_sendto = socket.socket.sendto


def getaddrinfo(host, *args, **kwargs):
    if not is_loopback(host):
        refuse("look-up", host)
    return real_getaddrinfo(host, *args, **kwargs)


def outward(sock, address):
    internet = sock.family in (socket.AF_INET, socket.AF_INET6)
    return internet and not is_loopback(address[0])


def connect(self, address):
    if outward(self, address):
        refuse("connection", address)
    return real_connect(self, address)


def connect_ex(self, address):
    if outward(self, address):
        refuse("connection", address)
    return real_connect_ex(self, address)


def sendto(self, data, *args):
    if outward(self, args[-1]):
        refuse("datagram", args[-1])
    return real_sendto(self, data, *args)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.socket.sendto = sendto
