//! Real sink servers for the ETL tests, each private to the test: PostgreSQL (Debian's
//! `initdb` + `pg_ctl`, as user `postgres` when the test runs as root) and ClickHouse
//! (`clickhouse-server` with a config of our own) and secantusdb (a MongoDB wire-protocol
//! server, from the venv `scripts/deps.sh` makes), on loopback ports, data in the test's
//! directory, stopped when dropped. `scripts/deps.sh` installs both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::free_port;
use super::http::try_http;

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/deps.sh installs it)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL bin directory")
}

fn as_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `program args…`, as user postgres when we are root.
fn pg_command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A private PostgreSQL.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    bin: PathBuf,
    _dir: PathBuf,
}

impl Postgres {
    pub fn start(parent: &Path) -> Postgres {
        let bin = pg_bin();
        let dir = parent.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        if as_root() {
            for d in [parent, &dir] {
                Command::new("chmod").arg("755").arg(d).status().unwrap();
            }
            Command::new("chown")
                .args(["postgres"])
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        let out = pg_command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres {
            port: free_port(),
            data,
            bin,
            _dir: dir,
        };
        pg.up();
        pg
    }

    /// Starts the server (again).
    pub fn up(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c wal_level=logical -c max_wal_senders=4 -c max_replication_slots=4",
            self.port,
            self.data.parent().unwrap().display()
        );
        let out = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.parent().unwrap().join("pg.log"))
            .args(["-w", "start", "-o", &opts])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops it at once (`immediate`: no checkpoint, as a crash leaves it).
    pub fn down(&self) {
        let _ = pg_command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// `sql`'s rows, `|`-separated, one per line.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// A private ClickHouse.
pub struct ClickHouse {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl ClickHouse {
    pub async fn start(parent: &Path) -> ClickHouse {
        let dir = parent.join("clickhouse");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let tcp = free_port();
        let d = dir.display();
        std::fs::write(
            dir.join("config.xml"),
            format!(
                "<yandex>\n<logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>\n\
                 <listen_host>127.0.0.1</listen_host><http_port>{port}</http_port><tcp_port>{tcp}</tcp_port>\n\
                 <path>{d}/data/</path><tmp_path>{d}/tmp/</tmp_path><user_files_path>{d}/user_files/</user_files_path>\n\
                 <format_schema_path>{d}/format_schemas/</format_schema_path><users_config>users.xml</users_config>\n\
                 <default_profile>default</default_profile><default_database>default</default_database>\n\
                 <mark_cache_size>5368709120</mark_cache_size>\n</yandex>\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("users.xml"),
            "<yandex><profiles><default></default></profiles><users><default><password></password>\
             <networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota>\
             </default></users><quotas><default></default></quotas></yandex>\n",
        )
        .unwrap();
        let mut ch = ClickHouse {
            port,
            dir,
            child: None,
        };
        ch.up().await;
        ch
    }

    /// Starts the server (again) and waits until it answers.
    pub async fn up(&mut self) {
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.join("config.xml").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clickhouse-server is not installed (scripts/deps.sh installs it)");
        self.child = Some(child);
        for _ in 0..300 {
            if let Ok((200, _, _)) = try_http(self.port, "GET", "/ping", &[], "").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ClickHouse did not answer on {}", self.port);
    }

    /// Kills it (-9).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `sql`; the answer's text (panics on an error answer).
    pub async fn query(&self, sql: &str) -> String {
        let (status, head, body) = try_http(self.port, "POST", "/", &[], sql).await.unwrap();
        let body = match head.contains("transfer-encoding: chunked") {
            true => dechunk(&body),
            false => body,
        };
        assert_eq!(status, 200, "{sql}: {body}");
        body.trim().to_string()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A chunked body's content.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A private secantusdb (MongoDB wire protocol; a replica-set primary named `secantus`).
pub struct Mongo {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Mongo {
    pub async fn start(parent: &Path) -> Mongo {
        let dir = parent.join("mongo");
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Mongo {
            port: free_port(),
            dir,
            child: None,
        };
        m.up().await;
        m
    }

    /// Starts the server (again, over the same storage) and waits until it listens.
    pub async fn up(&mut self) {
        let venv = std::env::var("STRATA_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/strata/venv")
            });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(venv.join("bin/secantusd-py"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--storage-path",
            ])
            .arg(self.dir.join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("secantusd-py is not installed (scripts/deps.sh installs it)");
        self.child = Some(child);
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("secantusdb did not listen on {}", self.port);
    }

    /// Kills it (-9).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/etl?replicaSet=secantus", self.port)
    }
}

impl Drop for Mongo {
    fn drop(&mut self) {
        self.kill();
    }
}
