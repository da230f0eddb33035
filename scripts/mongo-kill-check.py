"""Does the MongoDB-wire test server (secantusdb) keep every acknowledged transaction across
kill -9?  Each round: start the server over the same storage, commit 50-document transactions
for about a second, kill -9, start it again and count the documents against those
acknowledged.

    ~/.cache/strata/venv/bin/python scripts/mongo-kill-check.py [ROUNDS] [--journal] [--sync-on-commit]

--journal commits with write concern {w: majority, j: true}; --sync-on-commit starts the server
with its flag of that name (an fsync per commit). Needs the venv scripts/deps.sh makes.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from pymongo import MongoClient, WriteConcern

VENV = os.environ.get("STRATA_VENV", os.path.expanduser("~/.cache/strata/venv"))
SERVER = os.path.join(VENV, "bin/secantusd-py")
PORT = 27999


def up(data, sync):
    args = [SERVER, "--host", "127.0.0.1", "--port", str(PORT), "--storage-path", data]
    if sync:
        args.append("--sync-on-commit")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            c = MongoClient(
                f"mongodb://127.0.0.1:{PORT}/?replicaSet=secantus", serverSelectionTimeoutMS=200
            )
            c.admin.command("ping")
            return proc, c
        except Exception:
            time.sleep(0.1)
    proc.kill()
    sys.exit("the server did not answer")


def main():
    rounds = int(next((a for a in sys.argv[1:] if a.isdigit()), "5"))
    journal = "--journal" in sys.argv
    sync = "--sync-on-commit" in sys.argv
    wc = WriteConcern(w="majority", j=True) if journal else None
    work = tempfile.mkdtemp(prefix="mongo-kill-")
    data = os.path.join(work, "data")
    acked = 0
    lost_before = 0
    try:
        for r in range(rounds):
            proc, c = up(data, sync)
            rows = c.t.get_collection("rows", write_concern=wc)
            begun = time.time()
            while time.time() - begun < 1.0 + r * 0.13:
                with c.start_session() as s:
                    with s.start_transaction(write_concern=wc):
                        rows.insert_many([{"_id": f"{acked}-{k}"} for k in range(50)], session=s)
                acked += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc, c = up(data, sync)
            present = c.t.rows.count_documents({})
            lost = acked * 50 - present
            print(f"round {r}: acknowledged {acked * 50} documents in all, present {present}, "
                  f"lost in this round's kill {lost - lost_before}", flush=True)
            lost_before = lost
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        shutil.rmtree(work, ignore_errors=True)


main()
