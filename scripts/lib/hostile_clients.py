"""The attack clients of scripts/bench-hostile (stdlib only).

    python3 scripts/lib/hostile_clients.py BASE SERVER_PID ATTACKER_TOKEN VICTIM_TOKEN

Runs five attacks against the service at BASE (http://127.0.0.1:PORT), one after the other. For each
it prints the service's RSS growth (peak VmHWM during the attack minus VmRSS before it; the peak is
reset through /proc/PID/clear_refs first), what the attacker got, and the statuses and latencies of a
bystander probing /healthz from 127.0.0.1 every 100 ms on a fresh connection (as an orchestrator
does), then PASS/FAIL against the targets.
"""

import json
import os
import resource
import select
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

MIB = 1 << 20
BASE, PID, ATTACKER, VICTIM = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
HOST, PORT = BASE.removeprefix("http://").split(":")
PORT = int(PORT)
FLOODER = "127.0.0.2"  # all of 127/8 is loopback on Linux: "another client" of a service on 127.0.0.1
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"


def status_kib(field):
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak():
    try:
        with open(f"/proc/{PID}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Bystander(threading.Thread):
    """GET /healthz from 127.0.0.1 every 100 ms on a new connection; samples VmRSS meanwhile."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.statuses = Counter()
        self.latencies = []
        self.max_rss = status_kib("VmRSS")

    def run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            self.statuses[probe("/healthz")] += 1
            self.latencies.append(time.monotonic() - started)
            try:
                self.max_rss = max(self.max_rss, status_kib("VmRSS"))
            except (OSError, KeyError):
                pass
            self.stop.wait(max(0.0, 0.1 - (time.monotonic() - started)))

    def finish(self):
        self.stop.set()
        self.join()
        lat = sorted(self.latencies) or [0.0]
        return {
            "statuses": dict(self.statuses),
            "probes": len(self.latencies),
            "max_ms": lat[-1] * 1000,
            "p50_ms": lat[len(lat) // 2] * 1000,
        }


def probe(path, timeout=10):
    try:
        s = socket.create_connection((HOST, PORT), timeout=timeout, source_address=("127.0.0.1", 0))
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            return parse_status(read_all(s))
        finally:
            s.close()
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return type(err).__name__


def read_all(s, limit=1 << 20):
    data = b""
    while len(data) < limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def parse_status(data):
    if not data.startswith(b"HTTP/1.1 "):
        return "no answer" if not data else "garbled"
    return data[9:12].decode()


def parse_answer(data):
    """(status, code) of a raw HTTP response (code from a JSON error body, when there is one)."""
    status = parse_status(data)
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        code = json.loads(body.split(b"\r\n")[1] if b"chunked" in head.lower() else body).get("code", "")
    except (ValueError, IndexError, AttributeError):
        code = ""
    return status, code


def post(path, token, content_type, body, timeout, limit=1 << 20, source=None):
    """One POST on a fresh connection (Connection: close); its (status, code), or the socket error."""
    try:
        s = socket.create_connection((HOST, PORT), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        s.sendall((f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode())
        s.sendall(body)
        answer = read_all(s, limit)
        s.close()
        return parse_answer(answer)
    except OSError as err:
        return (type(err).__name__, "")


def measured(name, attack):
    """Runs `attack` with the bystander on; returns (attack result, RSS growth MiB, bystander)."""
    exact = reset_peak()
    before = status_kib("VmRSS")
    bystander = Bystander()
    bystander.start()
    started = time.monotonic()
    result = attack()
    seconds = time.monotonic() - started
    seen = bystander.finish()
    peak = status_kib("VmHWM") if exact else max(bystander.max_rss, status_kib("VmRSS"))
    growth = (peak - before) / 1024
    print(f"\n== {name} ({seconds:.1f} s)")
    print(f"   service RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB: growth {growth:.1f} MiB"
          + ("" if exact else " (VmHWM could not be reset: peak of 100 ms samples)"))
    print(f"   bystander GET /healthz every 100 ms: {seen['probes']} probes, statuses {seen['statuses']}, "
          f"p50 {seen['p50_ms']:.1f} ms, max {seen['max_ms']:.1f} ms")
    return result, growth, seen


def verdict(ok, target):
    print(f"   {'PASS' if ok else 'FAIL'} ({target})")
    return ok


# ---------------------------------------------------------------- a) multipart preamble
def multipart_preamble(total=256 * MIB, chunk=64 * 1024):
    s = socket.create_connection((HOST, PORT), timeout=30)
    s.sendall((f"POST /v1/media/upload HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {ATTACKER}\r\n"
               "Content-Type: multipart/form-data; boundary=never-sent-7f3a\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode())
    framed = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent, answered_at, answer, ended = 0, None, b"", "sent everything"
    while sent < total:
        if select.select([s], [], [], 0)[0]:
            data = s.recv(65536)
            if not data:
                ended = "the server closed the connection"
                break
            answer += data
            answered_at = answered_at or sent
        try:
            s.sendall(framed)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as err:
            ended = f"the server stopped reading ({type(err).__name__})"
            break
        sent += chunk
    try:
        s.sendall(b"0\r\n\r\n")
        s.settimeout(15)
        answer += read_all(s)
    except OSError:
        pass
    s.close()
    status, code = parse_answer(answer)
    return {"sent_mib": sent / MIB, "answered_after_mib": (answered_at or sent) / MIB if answer else None,
            "status": status, "code": code, "ended": ended}


# ---------------------------------------------------------------- b) resolve flood
def resolve_flood(callers=12, size=8_000_000):
    values = (size - 20) // 2
    body = b'{"payload":[' + b"0," * (values - 1) + b"0]}"

    def one(_):
        return post("/v1/media/resolve", ATTACKER, "application/json", body, timeout=120, limit=4 * MIB)

    with ThreadPoolExecutor(callers) as pool:
        answers = Counter(pool.map(one, range(callers)))
    return {"body_bytes": len(body), "values": values, "answers": dict(answers)}


# ---------------------------------------------------------------- c) connection flood
def connection_flood(count=1100, hold=20.0):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    socks, failed = [], Counter()
    started = time.monotonic()
    for _ in range(count):
        try:
            socks.append(socket.create_connection((HOST, PORT), timeout=5, source_address=(FLOODER, 0)))
        except OSError as err:
            failed[type(err).__name__] += 1
    connect_s = time.monotonic() - started
    time.sleep(1.0)
    closed_at_once = sum(closed_by_server(s) for s in socks)
    time.sleep(max(0.0, hold - (time.monotonic() - started)))
    closed_at_end = sum(closed_by_server(s) for s in socks)
    for s in socks:
        s.close()
    return {"opened": len(socks), "connect_failed": dict(failed), "connect_s": connect_s,
            "closed_at_once": closed_at_once, "closed_at_end": closed_at_end, "held_s": hold}


def closed_by_server(s):
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# ---------------------------------------------------------------- d) upload-slot stall
def stalled_upload(content_type, length, first):
    """Opens an upload that sends `first` and stalls; (socket, None) if admitted, else (None, answer)."""
    s = socket.create_connection((HOST, PORT), timeout=30)
    s.sendall((f"POST /v1/media HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {ATTACKER}\r\n"
               f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n").encode() + first)
    if select.select([s], [], [], 1.0)[0]:
        answer = s.recv(65536)
        s.close()
        return None, parse_answer(answer)
    return s, None


def upload_stall(victims=20, workers=4):
    held, refused = [], None
    s, answer = stalled_upload("application/json", 4 * MIB, b"{")
    json_admitted = s is not None
    held += [s] if s else []
    for _ in range(64):
        s, answer = stalled_upload("image/png", 10 * MIB, b"\x89")
        if s is None:
            refused = answer
            break
        held.append(s)

    def upload(i):
        return post("/v1/media", VICTIM, "image/png", PNG + os.urandom(4096), timeout=60, source="127.0.0.1")

    with ThreadPoolExecutor(workers) as pool:
        answers = Counter(pool.map(upload, range(victims)))
    stalled = Counter()
    for s in held:
        s.setblocking(False)
        try:
            data = s.recv(65536)
            stalled[parse_answer(data) if data else ("closed", "")] += 1
        except BlockingIOError:
            stalled[("still open", "")] += 1
        except OSError as err:
            stalled[(type(err).__name__, "")] += 1
        s.close()
    return {"json_admitted": json_admitted, "raw_admitted": len(held) - json_admitted,
            "next_refused": refused, "victim_answers": dict(answers), "stalled_saw": dict(stalled)}


# ---------------------------------------------------------------- e) upload trickle
def upload_trickle(every=5.0, give_up=180.0):
    """Opens raw uploads (as many as the attacker is admitted, at most 16) that each send a byte
    every `every` s — never idle for MEDIA_UPLOAD_IDLE_TIMEOUT — until answered or `give_up` s."""
    opened = time.monotonic()
    held, refused = [], None
    for _ in range(16):
        s, answer = stalled_upload("image/png", 10 * MIB, PNG)
        if s is None:
            refused = answer
            break
        held.append(s)
    answers, cut_after = Counter(), []
    open_ = list(held)
    while open_ and time.monotonic() - opened < give_up:
        readable = select.select(open_, [], [], every)[0]
        for s in readable:
            data = s.recv(65536)
            status, code = parse_answer(data) if data else ("closed", "")
            why = ""
            if data:
                try:
                    why = json.loads(data.partition(b"\r\n\r\n")[2]).get("error", "")
                except ValueError:
                    why = ""
            answers[(status, code, "MEDIA_UPLOAD_MIN_RATE" if "MEDIA_UPLOAD_MIN_RATE" in why else why[:60])] += 1
            cut_after.append(time.monotonic() - opened)
            open_.remove(s)
            s.close()
        for s in open_:
            try:
                s.sendall(b"\0")
            except OSError:
                pass
    for s in open_:
        answers[("still open", "", "")] += 1
        s.close()
    # The slots came back: the same caller's next upload, sent at once, is stored (a slot may be
    # released just after its answer was sent: 429 is retried for up to 5 s).
    for _ in range(10):
        after = post("/v1/media", ATTACKER, "image/png", PNG + os.urandom(4096), timeout=60)
        if after[0] != "429":
            break
        time.sleep(0.5)
    return {"admitted": len(held), "next_refused": refused, "answers": dict(answers),
            "cut_after_s": (min(cut_after), max(cut_after)) if cut_after else None, "upload_after": after}


def fmt(counter):
    return ", ".join(f"{k if isinstance(k, str) else ' '.join(x for x in k if x)} ×{v}" for k, v in counter.items())


def main():
    results = []
    a, growth, seen = measured("a) multipart preamble: chunked form, boundary never sent, 256 MiB", multipart_preamble)
    print(f"   attacker: {a['status']} {a['code']} after {a['answered_after_mib']} MiB sent; "
          f"{a['sent_mib']:.0f} MiB sent in all; {a['ended']}")
    results.append(verdict(growth <= 64, "RSS growth <= 64 MiB"))

    b, growth, seen = measured("b) resolve flood: 12 concurrent POST /v1/media/resolve, 8 MB of small values", resolve_flood)
    print(f"   attacker: {b['values']} values in {b['body_bytes']} bytes each; answers {fmt(b['answers'])}")
    results.append(verdict(growth <= 64, "RSS growth <= 64 MiB"))

    c, growth, seen = measured("c) connection flood: 1,100 idle connections from 127.0.0.2", connection_flood)
    print(f"   attacker: {c['opened']} connected in {c['connect_s']:.1f} s ({c['connect_failed'] or 'no connect failed'}); "
          f"1 s after the last: {c['closed_at_once']} closed by the server, {c['opened'] - c['closed_at_once']} held; "
          f"after {c['held_s']:.0f} s: {c['closed_at_end']} closed, {c['opened'] - c['closed_at_end']} still open")
    ok = seen["max_ms"] < 1000 and set(seen["statuses"]) == {"200"}
    results.append(verdict(ok, "every /healthz 200, max latency < 1 s"))

    d, growth, seen = measured("d) upload-slot stall: one caller's uploads send a byte and stall; "
                               "another tenant uploads 20 small images", upload_stall)
    refused = " ".join(d["next_refused"]) if d["next_refused"] else "none"
    print(f"   attacker: JSON data-URL upload admitted: {d['json_admitted']}; raw uploads admitted: "
          f"{d['raw_admitted']}; the next one: {refused}; the stalled ones saw at the end: {fmt(d['stalled_saw'])}")
    print(f"   victim (4 at a time): {fmt(d['victim_answers'])}")
    ok = all(str(k[0]).startswith("2") for k in d["victim_answers"])
    results.append(verdict(ok, "every victim upload 2xx"))

    e, growth, seen = measured("e) upload trickle: one caller's uploads each send a byte every 5 s "
                               "(never idle for MEDIA_UPLOAD_IDLE_TIMEOUT)", upload_trickle)
    refused = " ".join(e["next_refused"]) if e["next_refused"] else "none"
    cut = "never" if not e["cut_after_s"] else f"{e['cut_after_s'][0]:.0f}-{e['cut_after_s'][1]:.0f} s after they opened"
    print(f"   attacker: {e['admitted']} uploads admitted, the next one: {refused}; answers {fmt(e['answers'])}, "
          f"cut {cut}; its next upload sent at once: {' '.join(x for x in e['upload_after'] if x)}")
    ok = (set(e["answers"]) == {("408", "upload_timeout", "MEDIA_UPLOAD_MIN_RATE")}
          and str(e["upload_after"][0]).startswith("2") and growth <= 64)
    results.append(verdict(ok, "every trickled upload 408 naming MEDIA_UPLOAD_MIN_RATE, the caller's slots back, "
                               "RSS growth <= 64 MiB"))
    print(f"\n{sum(results)}/{len(results)} PASS")


main()
