//! `strata serve NAME`: runs one of the services (the consistency service so far) with the
//! shared shape of `strata-service`: settings from flags, environment and TOML, JSON logs with
//! correlation ids, `/health` and `/metrics`, graceful shutdown.

use std::sync::Arc;

use strata_service::server::{init_logging, shutdown_signal, store_client};
use strata_service::{CommonArgs, Metrics, Service, Settings};

use crate::Failure;

/// The services `strata serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// Jepsen runs over HTTP (port 8095).
    Consistency,
}

impl ServiceName {
    /// Every service `strata dev --services` starts.
    pub const ALL: [ServiceName; 1] = [ServiceName::Consistency];

    /// Its name (in settings, environment variables and logs).
    pub fn name(self) -> &'static str {
        match self {
            ServiceName::Consistency => "consistency",
        }
    }

    /// Its default port.
    pub fn port(self) -> u16 {
        match self {
            ServiceName::Consistency => strata_consistency::service::PORT,
        }
    }
}

/// `strata serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The service.
    #[arg(value_enum)]
    pub service: ServiceName,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `strata dev --services`: every service, in this process, over the node at `store`
/// (default ports; settings from each one's environment and defaults). Each stops at SIGINT or
/// SIGTERM as the node does; a service that cannot start is reported and the rest go on.
pub fn start_all_for_dev(store: std::net::SocketAddr) {
    for service in ServiceName::ALL {
        let args = ServeArgs {
            service,
            common: CommonArgs {
                store: vec![store.to_string()],
                ..CommonArgs::default()
            },
        };
        tokio::spawn(async move {
            if let Err(f) = run(args).await {
                tracing::error!(service = service.name(), error = %f.message, "service stopped");
            }
        });
    }
}

/// Runs the service until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let name = args.service.name();
    let settings = Settings::resolve(name, args.service.port(), &args.common, &|k| {
        std::env::var(k).ok()
    })
    .map_err(|e| Failure {
        message: format!("strata serve {name}: {e}"),
        exit_code: 2,
    })?;
    init_logging(settings.log_format);
    let store = store_client(&settings).map_err(|m| Failure {
        message: m,
        exit_code: 2,
    })?;
    let metrics = Arc::new(Metrics::default());
    let service = match args.service {
        ServiceName::Consistency => {
            let c = strata_consistency::service::Consistency::new(
                &settings,
                store.clone(),
                metrics.clone(),
                strata_engine::planted::AVAILABLE,
            )
            .map_err(|m| Failure {
                message: format!("strata serve {name}: {m}"),
                exit_code: 2,
            })?;
            let details = c.clone();
            Service {
                settings,
                routes: c.routes(),
                metrics,
                store,
                details: Some(Arc::new(move || details.details())),
            }
        }
    };
    strata_service::serve(service, shutdown_signal())
        .await
        .map_err(Failure::new)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_consistency_service_and_the_engine_agree_on_the_test_build_names() {
        use strata_consistency::test_build as t;
        use strata_engine::planted as p;
        assert_eq!(t::BUG_VAR, p::BUG_VAR);
        assert_eq!(t::DISK_VAR, p::DISK_VAR);
        assert_eq!(t::CLOCK_VAR, p::CLOCK_VAR);
        let names: Vec<&str> = p::Bug::ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, t::BUGS);
    }
}
