"""The ETL benchmark's driver (run by benches/etl.sh, which builds strata and measures the disk
first). Starts a node, PostgreSQL, ClickHouse and secantusdb in a fresh directory, writes the
events, drains them into each sink alone, runs the peers on the same rows, then all three
pipelines at a fixed rate for the lag. Prints one JSON line per run, then a summary."""

import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ticks(pid):
    """utime + stime of a process (0 once gone)."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except OSError:
        return 0


def tree(pid):
    """pid and its children (PostgreSQL's backends)."""
    out = [pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p))
            except OSError:
                pass
    return out


def cpu(pids):
    return sum(ticks(p) for p in pids) / TICK


def http(url, body=None, timeout=30):
    req = urllib.request.Request(url, data=body.encode() if isinstance(body, str) else body)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def wait_port(port, what, secs=60):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


class Servers:
    def __init__(self, a):
        self.a = a
        self.work = tempfile.mkdtemp(prefix="etl-bench.", dir=a.parent)
        os.chmod(self.work, 0o755)
        self.procs = []
        self.root = os.geteuid() == 0
        self.pgbin = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1]
        self.pgbin = f"/usr/lib/postgresql/{self.pgbin}/bin"

    def spawn(self, args, log, **kw):
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(log, "w"), **kw)
        self.procs.append(p)
        return p

    def as_pg(self, args):
        return (["runuser", "-u", "postgres", "--"] if self.root else []) + args

    def start(self):
        w = self.work
        self.node_port = free_port()
        self.node = self.spawn([self.a.strata, "dev", "--metrics", "off", "--listen",
                                f"127.0.0.1:{self.node_port}", "--data", f"{w}/store"], f"{w}/node.log")
        # PostgreSQL: defaults (fsync on, synchronous_commit on), logical WAL for the outbox.
        pg = f"{w}/pg"
        os.mkdir(pg)
        if self.root:
            shutil.chown(pg, "postgres")
        subprocess.run(self.as_pg([f"{self.pgbin}/initdb", "-D", f"{pg}/data", "-U", "postgres",
                                   "--auth=trust", "-E", "UTF8"]), check=True, stdout=subprocess.DEVNULL)
        self.pg_port = free_port()
        subprocess.run(self.as_pg([f"{self.pgbin}/pg_ctl", "-D", f"{pg}/data", "-l", f"{pg}/log", "-w", "start",
                                   "-o", f"-c listen_addresses=127.0.0.1 -p {self.pg_port} -k {pg} -c shared_buffers=1GB -c max_wal_size=4GB"]),
                       check=True, stdout=subprocess.DEVNULL)
        self.pg_pid = int(open(f"{pg}/data/postmaster.pid").readline())
        # ClickHouse.
        ch = f"{w}/ch"
        os.mkdir(ch)
        self.ch_port, self.ch_tcp = free_port(), free_port()
        open(f"{ch}/config.xml", "w").write(f"""<yandex><logger><level>warning</level><log>{ch}/server.log</log><errorlog>{ch}/error.log</errorlog></logger>
<listen_host>127.0.0.1</listen_host><http_port>{self.ch_port}</http_port><tcp_port>{self.ch_tcp}</tcp_port>
<path>{ch}/data/</path><tmp_path>{ch}/tmp/</tmp_path><user_files_path>{ch}/user_files/</user_files_path>
<format_schema_path>{ch}/format_schemas/</format_schema_path><users_config>users.xml</users_config>
<default_profile>default</default_profile><default_database>default</default_database><mark_cache_size>5368709120</mark_cache_size></yandex>""")
        open(f"{ch}/users.xml", "w").write("""<yandex><profiles><default></default></profiles><users><default><password></password>
<networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users><quotas><default></default></quotas></yandex>""")
        self.ch = self.spawn(["clickhouse-server", f"--config-file={ch}/config.xml"], f"{ch}/stderr.log")
        # secantusdb.
        self.mg_port = free_port()
        self.mg = self.spawn([f"{self.a.venv}/bin/secantusd-py", "--host", "127.0.0.1", "--port", str(self.mg_port),
                              "--storage-path", f"{w}/mongo"], f"{w}/mongo.log")
        wait_port(self.node_port, "the node")
        wait_port(self.ch_port, "ClickHouse")
        wait_port(self.mg_port, "secantusdb")
        for _ in range(100):
            try:
                if http(f"http://127.0.0.1:{self.ch_port}/ping").startswith("Ok"):
                    break
            except OSError:
                time.sleep(0.1)

    def psql(self, sql):
        return subprocess.run([f"{self.pgbin}/psql", "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "postgres",
                               "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True, text=True).stdout.strip()

    def ch_query(self, sql):
        return http(f"http://127.0.0.1:{self.ch_port}/", sql).strip()

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        subprocess.run(self.as_pg([f"{self.pgbin}/pg_ctl", "-D", f"{self.work}/pg/data", "-m", "fast", "stop"]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)


COLUMNS = """
[[column]]
name = "stream"
from = "$stream"
type = "text"
[[column]]
name = "version"
from = "$version"
type = "int"
[[column]]
name = "sku"
from = "/sku"
type = "text"
required = true
[[column]]
name = "amount"
from = "/amount"
type = "float"
min = 0
[[column]]
name = "at"
from = "$time"
type = "time"
"""


def pipeline(s, name, kind, table, prefix, start):
    url = {"postgres": f"host=127.0.0.1 port={s.pg_port} user=postgres dbname=postgres",
           "clickhouse": f"http://127.0.0.1:{s.ch_port}",
           "mongo": f"mongodb://127.0.0.1:{s.mg_port}/bench?replicaSet=secantus"}[kind]
    path = f"{s.work}/{name}.toml"
    open(path, "w").write(f"""name = "{name}"
[source]
prefix = "{prefix}"
event_types = ["OrderPlaced"]
partitions = 4
start = "{start}"
[batch]
events_max = 5000
linger_ms = 20
[sink]
kind = "{kind}"
url = "{url}"
table = "{table}"
{COLUMNS}""")
    return path


def tables(s, table):
    s.psql(f"CREATE TABLE {table} (stream text, version bigint, sku text, amount double precision, at timestamptz)")
    s.ch_query(f"CREATE TABLE {table} (stream String, version UInt64, sku String, amount Float64, at DateTime, "
               "_strata_partition UInt32, _strata_shard UInt32, _strata_position UInt64) "
               "ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(at) ORDER BY (stream, version)")


def serve_etl(s, files, tag):
    port = free_port()
    cfg = f"{s.work}/etl-{tag}.toml"
    open(cfg, "w").write(f'listen = "127.0.0.1:{port}"\nstore = ["127.0.0.1:{s.node_port}"]\n[etl]\npipelines = {json.dumps(files)}\n')
    p = subprocess.Popen([s.a.strata, "serve", "etl", "--config", cfg], stdout=subprocess.DEVNULL,
                         stderr=open(f"{s.work}/etl-{tag}.log", "w"))
    wait_port(port, "the ETL service")
    return p, port


def status(port, name):
    return json.loads(http(f"http://127.0.0.1:{port}/api/v1/pipelines/{name}"))


def load(s, events, prefix, rate=None):
    args = [s.a.strata, "bench", "orders", "--server", f"127.0.0.1:{s.node_port}", "--events", str(events),
            "--prefix", prefix]
    if rate:
        args += ["--rate", str(rate), "--clients", "4", "--batch", "10"]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)


def drain(s, kind, n):
    """Times from the service's start (its start-up counted) to the last event written."""
    name = f"{kind[:2]}"
    server = {"postgres": tree(s.pg_pid), "clickhouse": [s.ch.pid], "mongo": [s.mg.pid]}[kind]
    c0 = (0.0, cpu([s.node.pid]), cpu(server))
    t0 = time.time()
    etl, port = serve_etl(s, [pipeline(s, name, kind, "orders", "order-", "start")], name)
    while True:
        st = status(port, name)
        if st["events"] >= n:
            break
        if st["state"] == "refused" or time.time() - t0 > 3600:
            sys.exit(f"{name}: {st}")
        time.sleep(0.05)
    secs = time.time() - t0
    server = {"postgres": tree(s.pg_pid), "clickhouse": [s.ch.pid], "mongo": [s.mg.pid]}[kind]
    c1 = (cpu([etl.pid]), cpu([s.node.pid]), cpu(server))
    etl.send_signal(signal.SIGTERM)
    etl.wait(30)
    us = lambda i: round((c1[i] - c0[i]) * 1e6 / n, 1)
    r = {"run": "drain", "sink": kind, "events": n, "seconds": round(secs, 2), "events_per_s": round(n / secs),
         "cpu_us_per_event": {"etl": us(0), "node": us(1), "sink_server": us(2)}}
    print(json.dumps(r), flush=True)
    return r


def peers(s, n):
    out = {}
    f = f"{s.work}/pg/rows.tsv"
    s.psql(f"COPY (SELECT stream, version, sku, amount, at FROM orders) TO '{f}'")
    s.psql("CREATE TABLE orders_copy (LIKE orders)")
    t0 = time.time()
    s.psql(f"COPY orders_copy FROM '{f}'")
    secs = time.time() - t0
    rows = int(s.psql("SELECT count(*) FROM orders_copy"))
    out["postgres"] = {"run": "peer", "sink": "postgres", "how": "COPY FROM a file of the same rows (one transaction)",
                       "rows": rows, "seconds": round(secs, 3), "rows_per_s": round(rows / secs)}
    f = f"{s.work}/ch-rows.json"
    cols = "stream, version, sku, amount, at, _strata_partition, _strata_shard, _strata_position"
    with open(f, "w") as out_file:
        subprocess.run(["clickhouse-client", "--port", str(s.ch_tcp), "--query",
                        f"SELECT {cols} FROM orders FINAL FORMAT JSONEachRow"], stdout=out_file, check=True)
    s.ch_query("CREATE TABLE orders_copy AS orders")
    t0 = time.time()
    with open(f) as in_file:
        subprocess.run(["clickhouse-client", "--port", str(s.ch_tcp), "--query",
                        f"INSERT INTO orders_copy ({cols}) FORMAT JSONEachRow"], stdin=in_file, check=True)
    secs = time.time() - t0
    rows = int(s.ch_query("SELECT count() FROM orders_copy"))
    out["clickhouse"] = {"run": "peer", "sink": "clickhouse", "how": "clickhouse-client INSERT of the same rows as JSONEachRow",
                         "rows": rows, "seconds": round(secs, 3), "rows_per_s": round(rows / secs)}
    for r in out.values():
        print(json.dumps(r), flush=True)
    return out


def lag(s, rate, secs):
    tables(s, "orders_lag")
    files = [pipeline(s, f"{k[:2]}lag", k, "orders_lag", "lag-", "end") for k in ("postgres", "clickhouse", "mongo")]
    etl, port = serve_etl(s, files, "lag")
    time.sleep(2)  # every pipeline started at the end
    n = int(rate * secs)
    names = [f"{k[:2]}lag" for k in ("postgres", "clickhouse", "mongo")]
    waiting = {name: [] for name in names}  # each pipeline's counted backlog while loading
    done = threading.Event()

    def sample():
        while not done.is_set():
            for name in names:
                st = status(port, name)
                if st["lag_counted_us"]:
                    waiting[name].append(st["lag_events"])
            time.sleep(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    load(s, n, "lag", rate)
    done.set()
    sampler.join()
    t0 = time.time()
    out = []
    for k in ("postgres", "clickhouse", "mongo"):
        name = f"{k[:2]}lag"
        while status(port, name)["events"] < n and time.time() - t0 < 600:
            time.sleep(0.1)
        st = status(port, name)
        w = sorted(waiting[name]) or [0]
        r = {"run": "lag", "sink": k, "rate": rate, "seconds": secs, "events": st["events"],
             "lag_p50_ms": st["lag_p50_ms"], "lag_p99_ms": st["lag_p99_ms"],
             "lag_events_median": w[len(w) // 2], "lag_events_max": w[-1], "lag_counts": len(waiting[name])}
        print(json.dumps(r), flush=True)
        out.append(r)
    etl.send_signal(signal.SIGTERM)
    etl.wait(30)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--parent", default="/tmp")
    ap.add_argument("--venv", default=os.path.expanduser("~/.cache/strata/venv"))
    a = ap.parse_args()
    s = Servers(a)
    try:
        s.start()
        tables(s, "orders")
        w = load(s, a.events, "order")
        print(json.dumps({"run": "load", **w}), flush=True)
        drains = {k: drain(s, k, a.events) for k in ("postgres", "clickhouse", "mongo")}
        p = peers(s, a.events)
        lags = lag(s, a.rate, a.seconds)
        print("\nsummary (same run):")
        for k, d in drains.items():
            line = f"  {k:10} {d['events_per_s']:8} events/s  cpu/event: etl {d['cpu_us_per_event']['etl']} us, node {d['cpu_us_per_event']['node']} us, server {d['cpu_us_per_event']['sink_server']} us"
            if k in p:
                line += f"  vs {p[k]['how']}: {p[k]['rows_per_s']} rows/s ({d['events_per_s'] / p[k]['rows_per_s']:.2f}x)"
            print(line)
        for r in lags:
            print(f"  {r['sink']:10} at {r['rate']:.0f} events/s: lag p50 {r['lag_p50_ms']:.1f} ms, p99 {r['lag_p99_ms']:.1f} ms;"
                  f" events waiting (counted): median {r['lag_events_median']}, max {r['lag_events_max']} over {r['lag_counts']} looks")
    finally:
        s.stop()


if __name__ == "__main__":
    main()
