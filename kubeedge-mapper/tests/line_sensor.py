#!/usr/bin/python3
"""A line-based serial sensor for kubeedge-mapper's serial line driver tests (standard library
only).

    line_sensor.py <serial device>

Opens the device (one end of a socat pty pair) in raw mode, prints "READY" on stdout, then
answers CRLF-terminated requests with CRLF-terminated lines until the line goes away:

    READ T      -> T=21.5
    READ H      -> H,45,%
    READ S      -> S=<set point>         (20 at start)
    READ NAME   -> NAME=boiler 2
    SET <int>   -> OK                    (stores the set point)
    SET <other> -> ERR not a number
    anything    -> ERR unknown command

tests/serial_line.rs knows these answers; keep both in step.
"""

import os
import sys
import tty


def answer(command, state):
    if command == "READ T":
        return "T=21.5"
    if command == "READ H":
        return "H,45,%"
    if command == "READ S":
        return "S=%d" % state["set_point"]
    if command == "READ NAME":
        return "NAME=boiler 2"
    if command.startswith("SET "):
        try:
            state["set_point"] = int(command[4:])
        except ValueError:
            return "ERR not a number"
        return "OK"
    return "ERR unknown command"


def main():
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    print("READY", flush=True)
    state = {"set_point": 20}
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 256)
        except OSError:
            return  # the other end went away
        if not chunk:
            return
        pending += chunk
        if len(pending) > 4096:
            pending = b""  # a flood: start over
        while b"\r\n" in pending:
            line, pending = pending.split(b"\r\n", 1)
            command = line.decode("utf-8", "replace").strip()
            os.write(fd, answer(command, state).encode() + b"\r\n")


if __name__ == "__main__":
    main()
