//! A service's configuration, from (highest first) its flags, its environment
//! (`STRATA_<SERVICE>_LISTEN`, `_STORE`, `_CONFIG`, `_LOG_FORMAT`), its TOML file and the
//! defaults. Every value is checked before the service starts; a bad one is a usage error
//! naming where it came from.
//!
//! ```toml
//! listen = "127.0.0.1:8095"        # where the HTTP server listens
//! store = ["127.0.0.1:50051"]      # the store's nodes (strata-client addresses)
//! log_format = "json"              # or "text"
//!
//! [consistency]                    # the service's own settings, under its name
//! runs_dir = "/var/lib/strata/consistency"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Most store addresses a service takes (strata-client's own bound).
pub const STORE_ADDRESSES_MAX: usize = strata_client::ADDRESSES_MAX;
/// Largest configuration file, bytes.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (the default).
    Json,
    /// Human-readable lines.
    Text,
}

/// The flags every service takes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// Where the HTTP server listens (default 127.0.0.1 and the service's port).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The store's nodes, comma-separated (default 127.0.0.1:50051).
    #[arg(long, value_delimiter = ',')]
    pub store: Vec<String>,
    /// A TOML file of settings (see the crate docs).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// json (default) or text.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The file: the shared keys, and everything else (checked: only the service's section).
#[derive(Debug, Default, Deserialize)]
struct File {
    listen: Option<SocketAddr>,
    store: Option<Vec<String>>,
    log_format: Option<LogFormat>,
    #[serde(flatten)]
    sections: toml::Table,
}

/// A service's resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The service's name (`consistency`, `saga`, …).
    pub name: &'static str,
    /// Where it listens.
    pub listen: SocketAddr,
    /// The store's nodes.
    pub store: Vec<String>,
    /// How it logs.
    pub log_format: LogFormat,
    /// Its own section of the TOML file (`[NAME]`), empty without one.
    pub section: toml::Table,
}

/// A configuration that cannot be used: the message names the setting and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn env_name(service: &str, key: &str) -> String {
    format!("STRATA_{}_{key}", service.to_uppercase().replace('-', "_"))
}

impl Settings {
    /// Resolves the settings of service `name` (default port `port`) from `args`, the
    /// environment `env` (a lookup, so tests need not touch the process's) and the TOML file
    /// the flags or the environment name.
    pub fn resolve(
        name: &'static str,
        port: u16,
        args: &CommonArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let var = |key: &str| env(&env_name(name, key)).filter(|v| !v.is_empty());
        let path = args
            .config
            .clone()
            .or_else(|| var("CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(p) => read_file(p)?,
            None => File::default(),
        };
        let from_file = |what: &str| match &path {
            Some(p) => format!("{what} in {}", p.display()),
            None => what.to_string(),
        };
        let listen = match (args.listen, var("LISTEN")) {
            (Some(l), _) => l,
            (None, Some(v)) => v.parse().map_err(|e| {
                ConfigError(format!(
                    "{}: {v:?} is not an address: {e}",
                    env_name(name, "LISTEN")
                ))
            })?,
            (None, None) => file
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], port))),
        };
        let store = if !args.store.is_empty() {
            args.store.clone()
        } else if let Some(v) = var("STORE") {
            v.split(',').map(|s| s.trim().to_string()).collect()
        } else {
            file.store
                .clone()
                .unwrap_or_else(|| vec!["127.0.0.1:50051".to_string()])
        };
        if store.is_empty() || store.len() > STORE_ADDRESSES_MAX {
            return Err(ConfigError(format!(
                "{}: 1 to {STORE_ADDRESSES_MAX} store addresses, not {}",
                from_file("store"),
                store.len()
            )));
        }
        if let Some(bad) = store.iter().find(|a| a.trim().is_empty()) {
            return Err(ConfigError(format!("store: an empty address ({bad:?})")));
        }
        let log_format = match (args.log_format, var("LOG_FORMAT")) {
            (Some(f), _) => f,
            (None, Some(v)) => match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => {
                    return Err(ConfigError(format!(
                        "{}: json or text, not {v:?}",
                        env_name(name, "LOG_FORMAT")
                    )))
                }
            },
            (None, None) => file.log_format.unwrap_or(LogFormat::Json),
        };
        let mut section = toml::Table::new();
        for (key, value) in file.sections {
            match (key == name, value) {
                (true, toml::Value::Table(t)) => section = t,
                (true, _) => {
                    return Err(ConfigError(from_file(&format!("[{name}] must be a table"))))
                }
                (false, _) => {
                    return Err(ConfigError(from_file(&format!(
                        "unknown setting `{key}` (listen, store, log_format or [{name}])"
                    ))))
                }
            }
        }
        Ok(Settings {
            name,
            listen,
            store,
            log_format,
            section,
        })
    }

    /// A string setting of the service's own section.
    pub fn section_str(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.section.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(ConfigError(format!(
                "[{}] {key}: a string, not {other}",
                self.name
            ))),
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<File, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
    if meta.len() > CONFIG_BYTES_MAX {
        return Err(ConfigError(format!(
            "{}: {} bytes, more than {CONFIG_BYTES_MAX}",
            path.display(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("reading {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file_which_beats_the_defaults() {
        let dir =
            std::env::temp_dir().join(format!("strata-service-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7001\"\nstore = [\"a:1\", \"b:1\"]\nlog_format = \"text\"\n[consistency]\nruns_dir = \"/r\"\n",
        )
        .unwrap();
        let defaults =
            Settings::resolve("consistency", 8095, &CommonArgs::default(), &no_env).unwrap();
        assert_eq!(defaults.listen.port(), 8095);
        assert_eq!(defaults.store, ["127.0.0.1:50051"]);
        assert_eq!(defaults.log_format, LogFormat::Json);
        let args = CommonArgs {
            config: Some(file.clone()),
            ..CommonArgs::default()
        };
        let from_file = Settings::resolve("consistency", 8095, &args, &no_env).unwrap();
        assert_eq!(from_file.listen.port(), 7001);
        assert_eq!(from_file.store, ["a:1", "b:1"]);
        assert_eq!(from_file.log_format, LogFormat::Text);
        assert_eq!(
            from_file.section_str("runs_dir").unwrap().as_deref(),
            Some("/r")
        );
        let env = |k: &str| match k {
            "STRATA_CONSISTENCY_LISTEN" => Some("127.0.0.1:7002".to_string()),
            "STRATA_CONSISTENCY_STORE" => Some("c:1, d:1".to_string()),
            _ => None,
        };
        let from_env = Settings::resolve("consistency", 8095, &args, &env).unwrap();
        assert_eq!(from_env.listen.port(), 7002);
        assert_eq!(from_env.store, ["c:1", "d:1"]);
        let flags = CommonArgs {
            listen: Some("127.0.0.1:7003".parse().unwrap()),
            store: vec!["e:1".into()],
            ..args.clone()
        };
        let from_flags = Settings::resolve("consistency", 8095, &flags, &env).unwrap();
        assert_eq!(from_flags.listen.port(), 7003);
        assert_eq!(from_flags.store, ["e:1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_settings_are_refused_naming_where_they_came_from() {
        let env = |k: &str| (k == "STRATA_SAGA_LISTEN").then(|| "nowhere".to_string());
        let e = Settings::resolve("saga", 8080, &CommonArgs::default(), &env).unwrap_err();
        assert!(e.0.contains("STRATA_SAGA_LISTEN"), "{e}");
        let dir = std::env::temp_dir().join(format!("strata-service-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let args = CommonArgs {
            config: Some(file.clone()),
            ..CommonArgs::default()
        };
        let e = Settings::resolve("saga", 8080, &args, &|_| None).unwrap_err();
        assert!(e.0.contains("lisen"), "{e}");
        std::fs::write(&file, "store = []\n").unwrap();
        let e = Settings::resolve("saga", 8080, &args, &|_| None).unwrap_err();
        assert!(e.0.contains("store") && e.0.contains("c.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
