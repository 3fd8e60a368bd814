#!/usr/bin/python3
"""A Modbus device for kubeedge-mapper's tests: pymodbus 3.0 (Debian python3-pymodbus).

Serves Modbus TCP on 127.0.0.1:<port> or Modbus RTU on a serial device (one end of a socat
pty pair) with a datastore of known values. The Rust tests (tests/modbus_tcp.rs,
tests/modbus_rtu.rs) know these values; keep both in step.

    modbus_server.py tcp <port|0> [--mute-file PATH] [--fault-file PATH] [--reset-file PATH]
                                  [--log-file PATH]
    modbus_server.py rtu <device> [--unit N] [--baud N] [--mute-file PATH] [--fault-file PATH]

Prints "READY <port or device>" on stdout once it serves. Addresses outside the blocks below
answer with exception 2 (IllegalDataAddress). Faults, each switched by a file the test
creates and removes:

- mute file: while it exists, the device executes requests but sends no answer (a device
  that stopped answering, or stalls); remove the file and it answers again;
- fault file "FIRST LAST [N]": while it exists, reads (functions 1 to 4) of a range that
  overlaps addresses FIRST..=LAST answer exception 4 (ServerDeviceFailure); with N, only the
  next N such reads do, and then the server removes the file (the device recovers);
- reset file (TCP): while it exists, every request is answered by resetting the connection
  (TCP RST), a device that drops every connection.

The log file (TCP) gets one line per request received, "req <function> <address>", and
"exc <function> <address>" for each exception 4 answered by the fault file, "reset" for each
connection reset, so that a test can count the requests that reached the device.

Written against pymodbus 3.0 (Debian bookworm): StartAsync*Server(defer_start=True),
ModbusSlaveContext(zero_mode=True) so that wire address N is index N of each block.
"""

import argparse
import asyncio
import os
import struct
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.framer.rtu_framer import ModbusRtuFramer
from pymodbus.framer.socket_framer import ModbusSocketFramer
from pymodbus.server.async_io import (
    ModbusConnectedRequestHandler,
    StartAsyncSerialServer,
    StartAsyncTcpServer,
)
import socket


def words_f32(value):
    """An IEEE 754 single as two big-endian registers, high word first."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def words_f64(value):
    """An IEEE 754 double as four big-endian registers, high word first."""
    return list(struct.unpack(">HHHH", struct.pack(">d", value)))


def words_text(text, registers):
    """ASCII text, two characters a register, NUL padded."""
    raw = text.encode("ascii").ljust(registers * 2, b"\0")
    return list(struct.unpack(">%dH" % registers, raw))


def holding_registers():
    """100 holding registers (addresses 0..99)."""
    hr = [0] * 100
    hr[0] = 25  # INT
    hr[1] = 0xFFFB  # 65531 unsigned, -5 signed
    hr[2:4] = words_f32(21.5)  # FLOAT, ABCD
    hr[4:6] = list(reversed(words_f32(21.5)))  # FLOAT, word swapped (CDAB)
    hr[6:8] = [0x0001, 0x2345]  # INT 74565 from 2 registers
    hr[8:12] = words_text("KubeEdge", 4)  # STRING
    hr[12] = 0x3412  # byte swapped 0x1234 = 4660
    hr[13] = 0  # BOOLEAN false
    hr[14] = 1  # BOOLEAN true
    hr[16:20] = words_f64(1234.5678)  # DOUBLE
    hr[20:24] = [0x0102, 0x0304, 0x0506, 0x0708]  # INT 4 registers / register swap
    # 30..99: zero, the tests write here
    return hr


def input_registers():
    """20 input registers (addresses 0..19)."""
    ir = [0] * 20
    ir[0] = 215  # INT with scale 0.1 -> 21
    ir[1:3] = words_f32(-1.25)  # FLOAT
    ir[3] = 7
    return ir


def coils():
    """64 coils (addresses 0..63): 1,0,1,1,0,0,0,0 then 1 at 8, rest 0."""
    c = [0] * 64
    for i in (0, 2, 3, 8):
        c[i] = 1
    return c


def discrete_inputs():
    """32 discrete inputs (addresses 0..31): 0,1,1,0 then 0."""
    d = [0] * 32
    d[1] = 1
    d[2] = 1
    return d


def log(path, line):
    """Appends `line` to the request log, if there is one."""
    if path:
        with open(path, "a", encoding="ascii") as f:
            f.write(line + "\n")


class FaultyContext(ModbusSlaveContext):
    """A datastore whose reads fail (exception 4) while the fault file says so."""

    fault_file = None
    log_file = None

    def getValues(self, fx, address, count=1):  # pylint: disable=invalid-name
        if fx in (1, 2, 3, 4) and self._faulted(address, count):
            log(self.log_file, "exc %d %d" % (fx, address))
            # pymodbus answers an exception raised by the datastore with exception 4.
            raise RuntimeError("simulated device failure")
        return super().getValues(fx, address, count)

    def _faulted(self, address, count):
        path = self.fault_file
        if not path or not os.path.exists(path):
            return False
        try:
            with open(path, encoding="ascii") as f:
                fields = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            return False
        first, last = fields[0], fields[1]
        if address > last or address + count - 1 < first:
            return False
        if len(fields) > 2:
            left = fields[2] - 1
            if left <= 0:
                os.remove(path)
            else:
                with open(path, "w", encoding="ascii") as f:
                    f.write("%d %d %d" % (first, last, left))
        return True


class Handler(ModbusConnectedRequestHandler):
    """Logs every request; resets the connection while the reset file exists."""

    log_file = None
    reset_file = None

    def execute(self, request, *addr):
        log(
            self.log_file,
            "req %d %d" % (request.function_code, getattr(request, "address", -1)),
        )
        if self.reset_file and os.path.exists(self.reset_file):
            log(self.log_file, "reset")
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close() sends RST instead of FIN.
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            self.transport.abort()
            return
        super().execute(request, *addr)


def context(unit, args):
    FaultyContext.fault_file = args.fault_file
    FaultyContext.log_file = getattr(args, "log_file", None)
    slave = FaultyContext(
        di=ModbusSequentialDataBlock(0, discrete_inputs()),
        co=ModbusSequentialDataBlock(0, coils()),
        hr=ModbusSequentialDataBlock(0, holding_registers()),
        ir=ModbusSequentialDataBlock(0, input_registers()),
        zero_mode=True,
    )
    if unit is None:
        return ModbusServerContext(slaves=slave, single=True)
    return ModbusServerContext(slaves={unit: slave}, single=False)


def muter(mute_file):
    """A response manipulator that drops every answer while `mute_file` exists."""

    def manipulate(response):
        if mute_file and os.path.exists(mute_file):
            response.should_respond = False
        return response, False

    return manipulate


async def serve_tcp(args):
    Handler.log_file = args.log_file
    Handler.reset_file = args.reset_file
    server = await StartAsyncTcpServer(
        context=context(None, args),
        address=("127.0.0.1", args.target),
        framer=ModbusSocketFramer,
        handler=Handler,
        allow_reuse_address=True,
        defer_start=True,
        response_manipulator=muter(args.mute_file),
    )
    task = asyncio.create_task(server.serve_forever())
    await server.serving
    port = server.server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    await task


async def serve_rtu(args):
    server = await StartAsyncSerialServer(
        context=context(args.unit, args),
        framer=ModbusRtuFramer,
        port=args.target,
        baudrate=args.baud,
        bytesize=8,
        parity="N",
        stopbits=1,
        timeout=0.005,
        defer_start=True,
        response_manipulator=muter(args.mute_file),
    )
    await server.start()
    if server.transport is None:
        print("cannot open %s" % args.target, file=sys.stderr, flush=True)
        sys.exit(2)
    print("READY %s" % args.target, flush=True)
    await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("tcp", "rtu"))
    parser.add_argument("target", help="TCP port (0: any) or serial device path")
    parser.add_argument("--unit", type=int, default=1, help="RTU slave id")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--mute-file", default=None)
    parser.add_argument("--fault-file", default=None)
    parser.add_argument("--reset-file", default=None)
    parser.add_argument("--log-file", default=None)
    args = parser.parse_args()
    if args.mode == "tcp":
        args.target = int(args.target)
        asyncio.run(serve_tcp(args))
    else:
        asyncio.run(serve_rtu(args))


if __name__ == "__main__":
    main()
