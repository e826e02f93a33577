"""One punchd with N simulated peers: its CPU, RSS and probes/s as N grows (issue #22).

What runs, all on loopback, no namespaces:

* one real ``punchd`` process with the fake (in-memory) WireGuard backend, joined with
  a token like any node;
* a *fake signal server* in this process: just enough of the HTTP API (join, the
  snapshot, an event stream that stays quiet, candidate updates; relay requests are
  answered 503, so no relay work is measured) and a STUN responder, so the snapshot
  can hold a thousand peers without building a real network of a thousand joins;
* N *simulated peers*, each a real :class:`~punchd.punch.session.PunchSession` behind
  a :class:`~punchd.punch.driver.PunchDriver` on a UDP socket of its own: it answers
  punchd's probes and keeps the path alive exactly as a connected punchd peer does
  (same code, same pace), and is in the snapshot with a loopback host candidate;
* a plain UDP socket on punchd's WireGuard port that is never read, standing in for
  WireGuard (so probes are not answered with ICMP port-unreachable).

Per size: wait (bounded) until every peer's session is connected on both sides, let
it settle, then measure a window of ``--seconds``: punchd's CPU (utime+stime from
``/proc``) as % of one core, its RSS at the end, probes/s out of punchd and into it
(counted by the simulated peers), path losses in punchd's log during the window and
over the whole run, and peers connected at the end (punchd's own status). The
simulator's own CPU is reported beside it: a simulator that saturates would make
punchd look better than it is.

    python -m bench scale [--peers 10,100,300,1000] [--quick] [--seconds 20]
                          [--silent 1000] [--label after] [--out bench/results/scale.json]

``--silent N``: also N peers that never answer (offline nodes in the snapshot): what
punchd spends trying, measured after ``SILENT_SETTLE_S``.

Results are kept per ``--label`` in ``scale.json`` (so a baseline and later runs sit
side by side) and drawn as ``scale.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio
from nacl.public import PrivateKey, PublicKey

from punchd.punch.candidates import candidate
from punchd.punch.driver import PunchDriver
from punchd.punch.session import PunchSession
from punchd.wire import api
from punchd.wire.addr import Addr, format_addr
from punchd.wire.token import encode_token
from signal_server.stun_server import StunResponder

from .common import machine_info

NETWORK = "scale"
CIDR = "198.18.0.0/20"  # room for 4,000 peers
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
LOST_MARK = " lost; punching again"
READY_TIMEOUT_S = 20.0
SETTLE_S = 3.0
# Silent peers: past the first attempts (5 s each, then 10 s, 20 s... of backoff),
# where punchd's steady cost of trying is.
SILENT_SETTLE_S = 30.0
MAX_HEADER = 16384


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


# -- the simulated peers ---------------------------------------------------------------


class SimPeer:
    """One peer: a punch session on its own UDP socket, counting what it sends and gets."""

    def __init__(self, index: int, sock: trio.socket.SocketType) -> None:
        self.index = index
        self.sock = sock
        self.addr: Addr = sock.getsockname()[:2]
        self.key = PrivateKey.generate()
        self.sent = self.received = 0
        self.driver: PunchDriver | None = None
        self.node = api.Node(
            id=f"sim{index:05d}", network=NETWORK, name=f"sim{index}", signing_key=_key(),
            wg_public_key=_key(),
            probe_public_key=base64.b64encode(bytes(self.key.public_key)).decode(),
            listen_port=self.addr[1], ipv4=_mesh_address(index + 2),
            candidates=(candidate("host", self.addr),))

    async def _send(self, data: bytes, dest: Addr) -> None:
        self.sent += 1
        await self.sock.sendto(data, dest)

    async def run_silent(self) -> None:
        """A peer that is in the snapshot but never answers (offline, or firewalled)."""
        while True:
            try:
                await self.sock.recvfrom(2048)
            except OSError:
                continue
            self.received += 1

    async def run(self, punchd_key: PublicKey, punchd_addr: Addr) -> None:
        session = PunchSession(
            local_key=self.key, peer_key=punchd_key,
            local_candidates=[candidate("host", self.addr)],
            peer_candidates=[candidate("host", punchd_addr)], peer_nat=None,
            now=trio.current_time(), rng=random.Random(self.index))
        # Idle until punchd pings: then it joins in, as a punchd peer does.
        self.driver = PunchDriver(session, self._send)
        send, receive = trio.open_memory_channel[tuple[bytes, Addr]](64)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.driver.run, receive)
            while True:
                try:
                    data, src = await self.sock.recvfrom(2048)
                except OSError:
                    continue
                self.received += 1
                try:
                    send.send_nowait((data, (str(src[0]), int(src[1]))))
                except trio.WouldBlock:
                    pass

    @property
    def connected(self) -> bool:
        return self.driver is not None and self.driver.session.state == "connected"


def _mesh_address(n: int) -> str:
    import ipaddress

    net = ipaddress.ip_network(CIDR)
    return f"{net.network_address + n}/{net.prefixlen}"


# -- the fake signal server --------------------------------------------------------------


class FakeServer:
    """Enough of the signal server's HTTP API for one node among simulated peers."""

    def __init__(self, peers: list[SimPeer], listen_port: int, stun: Addr) -> None:
        self.peers = peers
        self.stun = format_addr(stun)
        self.network = api.Network(name=NETWORK, ipv4_cidr=CIDR, listen_port=listen_port)
        self.node: api.Node | None = None
        self.joined = trio.Event()
        self.requests: dict[str, int] = {}

    async def serve(self, listener: trio.SocketListener) -> None:
        await trio.serve_listeners(self._connection, [listener])

    async def _connection(self, stream: trio.SocketStream) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk or len(buf) > MAX_HEADER:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in lines[1:] if ":" in line)}
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                body, buf = buf[:length], buf[length:]
                path = urlsplit(target).path
                self.requests[f"{method} {path}"] = self.requests.get(f"{method} {path}", 0) + 1
                if method == "GET" and path == "/api/v1/events":
                    await self._stream(stream)
                    return
                status, payload = self._answer(method, path, body)
                await stream.send_all(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n\r\n".encode() + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError):
            return

    async def _stream(self, stream: trio.SocketStream) -> None:
        """The event stream: headers, then only comments (nothing changes)."""
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                              b"transfer-encoding: chunked\r\n\r\n")
        while True:
            comment = b": quiet\n\n"
            await stream.send_all(f"{len(comment):x}\r\n".encode() + comment + b"\r\n")
            await trio.sleep(10)

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        enc = msgspec.json.encode
        if method == "POST" and path == "/api/v1/join":
            req = msgspec.json.decode(body, type=api.JoinRequest)
            self.node = api.Node(
                id="punchd0", network=NETWORK, name="punchd0", signing_key=req.signing_key,
                wg_public_key=req.wg_public_key, probe_public_key=req.probe_public_key,
                listen_port=req.listen_port, ipv4=_mesh_address(1), candidates=req.candidates)
            self.joined.set()
            return 201, enc(api.JoinResponse(node=self.node, network=self.network,
                                             stun=self.stun))
        if self.node is None:
            return 401, enc(api.ErrorBody("not joined"))
        if method == "GET" and path == "/api/v1/node":
            return 200, enc(api.NetworkSnapshot(
                seq=1, network=self.network, node=self.node,
                peers=tuple(p.node for p in self.peers), stun=self.stun))
        if method == "PATCH" and path == "/api/v1/node":
            update = msgspec.json.decode(body, type=api.NodeUpdate)
            if update.candidates is not None:
                self.node = msgspec.structs.replace(self.node, candidates=update.candidates)
            if update.nat is not None:
                self.node = msgspec.structs.replace(self.node, nat=update.nat)
            return 200, enc(self.node)
        if method == "POST" and path == "/api/v1/relay":
            return 503, enc(api.ErrorBody("no relay in this benchmark"))
        if method == "DELETE" and path == "/api/v1/node":
            return 204, b""
        return 404, enc(api.ErrorBody(f"not in the fake server: {method} {path}"))


# -- punchd ------------------------------------------------------------------------------


async def control(path: Path, cmd: str, **args: Any) -> Any:
    with trio.fail_after(30):
        stream = await trio.open_unix_socket(str(path))
        async with stream:
            await stream.send_all(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    break
                buf += chunk
    answer = json.loads(buf)
    if not answer.get("ok"):
        raise RuntimeError(f"punchd {cmd}: {answer.get('error')}")
    return answer.get("result")


def connected_in_status(status: Any) -> int:
    return sum(1 for net in status.get("networks", ()) for p in net.get("peers", ())
               if (p.get("punch") or {}).get("state") == "connected")


def losses(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count(LOST_MARK)
    except OSError:
        return 0


async def run_size(n: int, seconds: float, workdir: Path, *,
                   silent: bool = False) -> dict[str, Any]:
    """One size; ``silent``: the peers never answer (punchd's cost of trying)."""
    work = workdir / (f"n{n}" + ("-silent" if silent else ""))
    work.mkdir(parents=True)
    sockets = []
    for _ in range(n):
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    peers = [SimPeer(i, s) for i, s in enumerate(sockets)]
    # WireGuard's stand-in: holds the port, never reads (its queue fills and drops).
    wg_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wg_port.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    wg_port.bind(("127.0.0.1", 0))
    listen_port = wg_port.getsockname()[1]
    stun_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await stun_sock.bind(("127.0.0.1", 0))
    stun_addr: Addr = stun_sock.getsockname()[:2]
    http = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await http.bind(("127.0.0.1", 0))
    http.listen(64)
    server = FakeServer(peers, listen_port, stun_addr)
    url = f"http://127.0.0.1:{http.getsockname()[1]}"
    log_path = work / "punchd.log"
    ctl = work / "punchd.sock"
    row: dict[str, Any] = {"peers": n, "silent": silent}
    proc: trio.Process | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(StunResponder(stun_addr, sockets={stun_addr: stun_sock}).run)
            nursery.start_soon(server.serve, trio.SocketListener(http))
            with log_path.open("wb") as log_file:
                # BENCH_PROFILE=DIR: punchd runs under cProfile (a .prof file per size).
                prof = os.environ.get("BENCH_PROFILE")
                wrap = ["-m", "cProfile", "-o", f"{prof}/punchd-{n}.prof"] if prof else []
                proc = await trio.lowlevel.open_process(
                    [sys.executable, *wrap, "-m", "punchd.daemon.main", "--state-dir",
                     str(work / "state"), "--socket", str(ctl), "--wg-backend", "fake",
                     "--no-port-mapping"],
                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
            pid = proc.pid
            for _ in range(int(READY_TIMEOUT_S / 0.05)):
                if ctl.exists():
                    break
                await trio.sleep(0.05)
            else:
                raise RuntimeError(f"punchd made no control socket in {READY_TIMEOUT_S:g} s")
            t_join = time.monotonic()
            await control(ctl, "join", token=encode_token(url, NETWORK, "bench"))
            assert server.node is not None
            punchd_key = PublicKey(base64.b64decode(server.node.probe_public_key))
            for peer in peers:
                if silent:
                    nursery.start_soon(peer.run_silent)
                else:
                    nursery.start_soon(peer.run, punchd_key, ("127.0.0.1", listen_port))
            limit = 30 + 0.1 * n if not silent else SILENT_SETTLE_S
            ours = 0
            with trio.move_on_after(limit):
                while True:
                    ours = connected_in_status(await control(ctl, "status", network=NETWORK))
                    if not silent and ours == n and all(p.connected for p in peers):
                        break
                    await trio.sleep(1.0)
            row["all_connected_after_s"] = (round(time.monotonic() - t_join, 1)
                                            if ours == n else None)
            row["connected_before_window"] = ours
            await trio.sleep(SETTLE_S)
            lost0 = losses(log_path)
            cpu0, sent0 = cpu_seconds(pid), sum(p.sent for p in peers)
            recv0 = sum(p.received for p in peers)
            sim0 = time.process_time()
            t0 = time.monotonic()
            await trio.sleep(seconds)
            elapsed = time.monotonic() - t0
            cpu1, sent1 = cpu_seconds(pid), sum(p.sent for p in peers)
            recv1 = sum(p.received for p in peers)
            row.update({
                "window_s": round(elapsed, 2),
                "cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 2),
                "rss_mb": round(rss_mb(pid), 1),
                "probes_out_per_s": round((recv1 - recv0) / elapsed, 1),
                "probes_in_per_s": round((sent1 - sent0) / elapsed, 1),
                "cpu_us_per_probe": round(1e6 * (cpu1 - cpu0) / max(
                    1, (recv1 - recv0) + (sent1 - sent0)), 1),
                "load_avg_1m": os.getloadavg()[0],
                "path_losses_window": losses(log_path) - lost0,
                "simulator_cpu_pct": round(100 * (time.process_time() - sim0) / elapsed, 1),
            })
            status = await control(ctl, "status", network=NETWORK)
            row["connected_end"] = connected_in_status(status)
            row["sim_connected_end"] = sum(p.connected for p in peers)
            row["path_losses_total"] = losses(log_path)
            nursery.cancel_scope.cancel()
    finally:
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(10), trio.CancelScope(shield=True):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        for sock in sockets:
            sock.close()
        wg_port.close()
        http.close()
    return row


def render(results: dict[str, Any]) -> str:
    lines = ["# bench scale: one punchd, N simulated peers (loopback, fake WireGuard)", "",
             "Method: `bench/scale.py` docstring. CPU is % of one core over the window; "
             "probes/s as the simulated peers count them; losses are punchd's "
             "`lost; punching again` log lines. The machine is shared (see load avg): "
             "a starved punchd shows a low CPU % and few probes, so CPU µs per probe is "
             "the figure that compares across runs.", ""]
    for label, run in results.get("runs", {}).items():
        lines += [f"## {label} ({run['machine']['time_utc']}, {run['window_s']} s window, "
                  f"commit {run.get('commit', '?')})", "",
                  "| peers | punchd CPU | RSS MB | probes/s out / in | CPU µs/probe "
                  "| losses (window / run) | connected end | all connected after "
                  "| simulator CPU | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(
                f"| {r['peers']}{' silent' if r.get('silent') else ''} | {r.get('cpu_pct', '?')} % | {r.get('rss_mb', '?')} | "
                f"{r.get('probes_out_per_s', '?')} / {r.get('probes_in_per_s', '?')} | "
                f"{r.get('cpu_us_per_probe', '?')} | {r.get('path_losses_window', '?')} / {r.get('path_losses_total', '?')} | "
                f"{r.get('connected_end', '?')} | {r.get('all_connected_after_s') or 'never'} s | "
                f"{r.get('simulator_cpu_pct', '?')} % | {r.get('load_avg_1m', 0):.1f} |")
        lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    if os.environ.get("BENCH_COMMIT"):  # a run from an exported tree (no .git)
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", default="10,100,300,1000")
    parser.add_argument("--quick", action="store_true", help="10 and 100 peers, 10 s")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--silent", default="",
                        help="sizes to run with peers that never answer, e.g. 1000")
    parser.add_argument("--label", default="latest")
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--keep", action="store_true", help="keep punchd's logs (printed)")
    args = parser.parse_args()
    sizes = [10, 100] if args.quick else [int(s) for s in args.peers.split(",") if s]
    seconds = args.seconds if args.seconds is not None else (10.0 if args.quick else 20.0)
    workdir = Path(tempfile.mkdtemp(prefix="punchd-scale-"))
    rows = []
    runs = [(n, False) for n in sizes] + [(int(n), True) for n in args.silent.split(",") if n]
    try:
        for n, silent in runs:
            row = trio.run(partial(run_size, silent=silent), n, seconds, workdir)
            rows.append(row)
            print(f"  {n:5}{' silent' if silent else ''} peers: punchd {row.get('cpu_pct')}% of a core, "
                  f"RSS {row.get('rss_mb')} MB, probes/s {row.get('probes_out_per_s')} out / "
                  f"{row.get('probes_in_per_s')} in, losses {row.get('path_losses_window')} "
                  f"(run {row.get('path_losses_total')}), connected {row.get('connected_end')}"
                  f"/{n}, simulator {row.get('simulator_cpu_pct')}%", flush=True)
    finally:
        if args.keep:
            print(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results: dict[str, Any] = {"runs": {}}
    if args.out.exists():
        try:
            results = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            pass
    results.setdefault("runs", {})[args.label] = {
        "machine": machine_info(), "window_s": seconds, "commit": _commit(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
