#!/usr/bin/env python3
"""What a durable group-commit round costs when a node holds several shards, each with its own
log file: one 4 KiB write per file per round, then either an fdatasync per file ("each"), or
writeback started on every file, waited for, and one fdatasync ("one": the device flush it
issues covers every write completed before it), or, for comparison, the same bytes as one write
to one shared file and one fdatasync ("shared", a node-wide log). Files are written out in full first, like
Strata's preallocated segments, so a round changes no file size or block map. Prints rounds/s
and µs per round for 1 and N files. Feeds the sharding design (docs/ARCHITECTURE.md,
"Sharding").
    usage: benches/sync-round.py [FILES=8] [SECONDS=4] [DIR=/tmp]
"""
import ctypes
import os
import sys
import tempfile
import time

SYNC_FILE_RANGE_WAIT_BEFORE, SYNC_FILE_RANGE_WRITE, SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4
FILE_BYTES = 64 << 20
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sync_file_range(fd, offset, nbytes, flags):
    if libc.sync_file_range(fd, ctypes.c_int64(offset), ctypes.c_int64(nbytes), flags) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


def run(directory, files, mode, seconds):
    fds = []
    block = b"x" * 4096
    if mode == "shared":
        block, files = block * files, 1
    for i in range(files):
        fd = os.open(os.path.join(directory, f"log-{i}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"\0" * FILE_BYTES)
        os.fsync(fd)
        fds.append(fd)
    offset, rounds, started = 0, 0, time.monotonic()
    while time.monotonic() - started < seconds:
        for fd in fds:
            os.pwrite(fd, block, offset)
        if mode in ("each", "shared"):
            for fd in fds:
                os.fdatasync(fd)
        else:
            for fd in fds[1:]:
                sync_file_range(fd, offset, len(block), SYNC_FILE_RANGE_WRITE)
            wait = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
            for fd in fds[1:]:
                sync_file_range(fd, offset, len(block), wait)
            os.fdatasync(fds[0])
        offset = (offset + len(block)) % (FILE_BYTES - len(block))
        rounds += 1
    elapsed = time.monotonic() - started
    for fd in fds:
        os.close(fd)
    print(f"{len(block) >> 10:2} KiB in {files} file(s), {mode:6}: {rounds / elapsed:7.0f} rounds/s, {1e6 * elapsed / rounds:5.0f} µs per round")


def main():
    files = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 4
    parent = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    with tempfile.TemporaryDirectory(dir=parent) as directory:
        run(directory, 1, "each", seconds)
        for mode in ("each", "one", "shared"):
            run(directory, files, mode, seconds)


if __name__ == "__main__":
    main()
