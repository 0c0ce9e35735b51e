"""Soak: a 10,000-request caching job against the fault server, at concurrency 32, killed
with SIGKILL at random moments and run once into a full disk, then finished; once per
server mode.

The job runs as `workbench cache run` in a child process (so SIGKILL is real); the fault
server (``tests/support/fake_openai.py``) runs in another child process and bills like a
paid API: it counts the prompt tokens of every answer it bills. Its modes
(``soak_schedule``): ``usage`` (5 % of prompts fail once with 429, 500, a malformed or a
truncated body, then answer with their usage), ``nousage`` (the same, answers billed
without usage: each is counted at its worst-case price) and ``deadline`` (5 % of prompts
are billed and answered after the job's deadline, then answered again). The cache lives
on a 64 MB tmpfs when this process may mount one (root); the disk-full episode fills it
with a ballast file. Elsewhere the episode is injected: the job runs in-process with
SQLite's own "database or disk is full" after a few more pages (``max_page_count``).

Prints, per mode: requests sent vs keys; rows lost (paid answers that could be read,
neither stored nor spilled — at most the answers in flight at a SIGKILL, goal 0
otherwise); duplicates (ok rows per key above one, goal 0, and answers paid twice because
a kill came between the answer and its commit); money counted in the cache vs money the
server billed. Then a table of counted, billed and counted/billed per mode, checking that
counted >= billed (less at most the answers a SIGKILL cut in flight: kills x 32 x the
dearest answer) and, where the server says its usage (``usage``, ``deadline``),
counted/billed <= 1.02.
Exits 1 when a check fails.

    python bench/cache_soak.py [--n 10000] [--kills 5] [--seed 0] [--modes usage,nousage,deadline]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import yaml
from common import REPO, Timer, loadavg

from workbench.cache.store import CacheFull, CacheStore
from workbench.config import CacheConfig, CacheJobConfig, DataConfig, TeacherConfig, to_dict
from workbench.data.synth import SynthSpec, write

TEMPLATE = "sentiment_polarity"
PRICE_PER_MTOK = 1e6  # $1 per prompt token: money counted == tokens, exactly comparable


SOAK_MODES = ("usage", "nousage", "deadline")
"""The fault server's modes (``python -m tests.support.fake_openai --mode``)."""
CONCURRENCY = 32
USAGE_MODES = ("usage", "deadline")
"""The modes whose server says the usage of every answer it sends."""
MAX_RATIO = 1.02
"""Counted/billed at most where the server says its usage: the estimates of attempts
that may have been billed unseen should stay a small part of the spend."""


def start_server(fault_rate: float, mode: str, hang_s: float) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fake_openai", "--fault-rate",
                             str(fault_rate), "--mode", mode, "--hang-s", str(hang_s)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    return proc, url


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats") as r:
        return json.loads(r.read())


def unique_texts(manifest: Path) -> Path:
    """Number every transcript, so that N samples make N distinct keys (the synthetic set
    repeats sentences)."""
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["text"] = f"{row['text']} (take {i})"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return manifest


def mount_tmpfs(where: Path, size_mb: int) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


def run_cli(recipe: Path, kill_after: float | None) -> tuple[int, str]:
    """Run the job; with ``kill_after``, SIGKILL it that many seconds after it starts sending."""
    cmd = [sys.executable, "-m", "workbench.cli", "cache", "run", "--config", str(recipe)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    sending = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "to ask" in line:
                sending.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill_after is not None and sending.wait(timeout=600) and proc.poll() is None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join()
    return proc.returncode, "".join(lines)


def disk_full_injected(cfg: CacheJobConfig) -> str:
    """The disk-full episode without a mount: SQLite's own full error after 40 more pages."""
    from teachers.run import run_cache_job

    real_init = CacheStore.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.conn.execute(f"PRAGMA max_page_count={pages + 40}")

    CacheStore.__init__ = init
    try:
        run_cache_job(cfg)
    except CacheFull as e:
        return f"exit 2: {str(e)[:160]}..."
    finally:
        CacheStore.__init__ = real_init
    return "the job finished before the disk filled"


def disk_full_episode(cfg: CacheJobConfig, recipe: Path, fs: Path | None) -> str:
    if fs is None:
        return "disk full injected (no mount here): " + disk_full_injected(cfg)
    with CacheStore(cfg.cache.dir) as store:  # a killed run's WAL is reclaimed first
        store.checkpoint()
    ballast = fs / "ballast.bin"
    free = shutil.disk_usage(fs).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - 256 * 1024))
    rc, err = run_cli(recipe, kill_after=None)
    ballast.unlink()
    said = [line for line in err.splitlines() if line.startswith("error:")]
    return f"disk full on a tmpfs: rc {rc}: {' | '.join(said) or err[-300:]}"


def soak(mode: str, args: argparse.Namespace, rng: random.Random, tmp: Path) -> dict:
    """One soak against a server in ``mode``; prints its figures, returns its money."""
    fs = tmp / "fs"
    mounted = mount_tmpfs(fs, 64)
    cache_dir = (fs if mounted else tmp) / "cache"
    manifest = unique_texts(write(tmp / "synth", SynthSpec(n=args.n, seed=args.seed)))
    data = DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz"))
    server, url = start_server(args.fault_rate, mode, hang_s=args.timeout_s + 1.0)
    try:
        tcfg = TeacherConfig(backend="openai_compat", model="soak", base_url=url, api="completions",
                             max_concurrency=CONCURRENCY, timeout_s=args.timeout_s, max_retries=3)
        tcfg.price.input_per_mtok = PRICE_PER_MTOK
        cfg = CacheJobConfig(data=data, teacher=tcfg, cache=CacheConfig(
            dir=str(cache_dir), template=TEMPLATE, max_error_rate=0.5))
        recipe = tmp / "soak.yaml"
        recipe.write_text(yaml.safe_dump(to_dict(cfg)))
        episodes = []
        with Timer() as wall:
            for i in range(args.kills):
                rc, _ = run_cli(recipe, kill_after=rng.uniform(2.0, 8.0))
                episodes.append(f"SIGKILL (rc {rc})")
                if i == 0:  # the disk-full episode, while most keys are still to send
                    episodes.append(disk_full_episode(cfg, recipe, fs if mounted else None))
            if args.kills == 0:
                episodes.append(disk_full_episode(cfg, recipe, fs if mounted else None))
            rc, err = run_cli(recipe, kill_after=None)
            episodes.append(f"final run: rc {rc}")
            if rc != 0:
                print(err)
        s = stats(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    with CacheStore(cache_dir) as store:
        st = store.status()
        rows = dict(store.conn.execute("SELECT status, COUNT(*) FROM outputs GROUP BY status").fetchall())
        ok_dupes = store.conn.execute(
            "SELECT COUNT(*) FROM (SELECT key FROM outputs WHERE status='ok' GROUP BY key "
            "HAVING COUNT(*) > 1)").fetchone()[0]
        counted = store.spent("soak")
        estimated, n_estimated = store.conn.execute(
            "SELECT COALESCE(SUM(json_extract(meta, '$.cost_estimated.estimated_usd')), 0), "
            "COUNT(json_extract(meta, '$.cost_estimated')) FROM outputs").fetchone()
        integrity = store.conn.execute("PRAGMA integrity_check").fetchone()[0]
    if mounted:
        subprocess.run(["umount", "-l", str(fs)], check=False)
    paid_rows = rows.get("ok", 0) + rows.get("duplicate", 0)
    readable = s["billed_answers"] - s["billed_unread"]
    billed = s["billed_tokens_in"] * PRICE_PER_MTOK / 1e6
    print(f"[{mode}]")
    for e in episodes:
        print("  " + e)
    print(f"  keys {st['keys']}, ok {st['ok']}, errors {st['errors']}, pending {st['pending']}, "
          f"integrity {integrity}, {wall.s:.0f}s ({loadavg()})")
    print(f"  requests sent {s['attempts']} for {st['keys']} keys "
          f"({s['attempts'] / max(1, st['keys']):.3f} per key; faults {s['attempts'] - readable}, "
          f"of which billed unread {s['billed_unread']})")
    print(f"  rows lost: {readable - paid_rows} of {readable} readable paid answers not in the "
          f"cache (bound: {args.kills} kills x {CONCURRENCY} in flight = {args.kills * CONCURRENCY})")
    print(f"  duplicates: {ok_dupes} keys with two ok rows; {s['billed_answers'] - s['billed_prompts']} "
          f"answers paid twice ({rows.get('duplicate', 0)} stored as duplicate rows)")
    print(f"  money counted ${counted:,.0f} vs billed ${billed:,.0f}; of the counted, "
          f"${estimated:,.0f} is estimates on {n_estimated} rows (answers without "
          "usage, attempts that may have been billed unseen)")
    dearest = s["billed_max_tokens_in"] * PRICE_PER_MTOK / 1e6
    return {"counted": counted, "billed": billed, "estimated": estimated,
            "killed_bound": args.kills * CONCURRENCY * dearest}


def money_table(money: dict[str, dict]) -> bool:
    """Print counted, billed and their ratio per mode with the checks; True when all hold."""
    print(f"{'mode':<10}{'counted $':>12}{'estimated $':>13}{'billed $':>12}"
          f"{'counted/billed':>16}  checks")
    good = True
    for mode, m in money.items():
        counted, billed = m["counted"], m["billed"]
        ratio = counted / billed if billed else float("inf")
        floor = billed - m["killed_bound"]
        checks = [f"counted >= billed: {'yes' if counted >= billed else 'NO'}"]
        if counted < billed:
            within = counted >= floor
            checks.append(f"{'within' if within else 'BEYOND'} the answers a SIGKILL may cut in "
                          f"flight (>= ${floor:,.0f})")
            good &= within
        if mode in USAGE_MODES:
            holds = ratio <= MAX_RATIO
            checks.append(f"counted/billed <= {MAX_RATIO}: {'yes' if holds else 'NO'}")
            good &= holds
        print(f"{mode:<10}{counted:>12,.0f}{m['estimated']:>13,.0f}{billed:>12,.0f}"
              f"{ratio:>16.4f}  {'; '.join(checks)}")
    return good


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples (about as many keys)")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs at random moments, per mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.05)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="the job's teacher.timeout_s")
    ap.add_argument("--modes", default=",".join(SOAK_MODES),
                    help=f"server modes to soak, comma-separated, of {','.join(SOAK_MODES)}")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in SOAK_MODES:
            ap.error(f"--modes: {m!r} is none of {SOAK_MODES}")
    rng = random.Random(args.seed)
    money = {}
    for mode in modes:
        money[mode] = soak(mode, args, rng, Path(tempfile.mkdtemp(prefix=f"soak-{mode}-")))
    if not money_table(money):
        sys.exit(1)


if __name__ == "__main__":
    main()
