"""A Modbus TCP server with known register values, for the modbus-tcp
driver's tests (pymodbus 3.x).

Usage: python3 modbus_server.py PORT

Listens on 127.0.0.1:PORT, prints "ready" once it accepts connections, and
exits by itself after --lifetime seconds (default 120) so that it can never
outlive the tests that started it. Unit id 1.

Holding registers (0-based addresses, as on the wire):
  0     215           i16 x 0.1 -> 21.5
  1-2   0x0001 86A0   u32 100000 (high word first)
  3-4   0x4060 0000   f32 3.5
  5     0xFFFB        i16 -5
  6-7   0xFFFE 7960   i32 -100000
  10    50            u16, writable by the tests
Input registers:
  0     1234          u16
  1     0xFFFF        i16 -1
"""

import argparse
import asyncio
import logging
import warnings

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext

try:  # pymodbus >= 3.10
    from pymodbus.datastore import ModbusDeviceContext as DeviceContext
except ImportError:  # earlier 3.x
    from pymodbus.datastore import ModbusSlaveContext as DeviceContext
from pymodbus.server import StartAsyncTcpServer

HOLDING = {0: 215, 1: 0x0001, 2: 0x86A0, 3: 0x4060, 4: 0x0000, 5: 0xFFFB, 6: 0xFFFE, 7: 0x7960, 10: 50}
INPUT = {0: 1234, 1: 0xFFFF}


def block(values):
    """A block whose wire address 0 holds values[0]: pymodbus 3.x blocks
    are 1-based (a request for address a reads block address a + 1)."""
    return ModbusSequentialDataBlock(1, [values.get(a, 0) for a in range(100)])


def context():
    device = DeviceContext(hr=block(HOLDING), ir=block(INPUT))
    try:
        return ModbusServerContext(devices=device, single=True)
    except TypeError:  # earlier 3.x name
        return ModbusServerContext(slaves=device, single=True)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    # pymodbus 3.16 announces the datastore API's removal in 4.0 on every
    # start; the tests pin 3.x, where it works.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.ERROR)
    warnings.simplefilter("ignore", DeprecationWarning)
    server = asyncio.create_task(StartAsyncTcpServer(context(), address=("127.0.0.1", args.port)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        if server.done():
            server.result()  # raises the server's startup error
            raise SystemExit("the server stopped during startup")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", args.port)
            writer.close()
            break
        except OSError:
            if loop.time() > deadline:
                raise SystemExit(f"nothing listens on port {args.port} after 10 s")
            await asyncio.sleep(0.05)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(server, timeout=args.lifetime)
    except asyncio.TimeoutError:
        pass


if __name__ == "__main__":
    asyncio.run(main())
