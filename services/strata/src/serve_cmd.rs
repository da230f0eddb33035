//! `strata serve NAME`: runs one of the services (saga, inventory, payment, notification,
//! gateway, consistency, etl) with the
//! shared shape of `strata-service`: settings from flags, environment and TOML, JSON logs with
//! correlation ids, `/health` and `/metrics`, graceful shutdown.

use std::sync::Arc;

use strata_saga::participant;
use strata_service::server::{init_logging, shutdown_signal, store_client};
use strata_service::{CommonArgs, Metrics, Service, Settings};

use crate::Failure;

/// The services `strata serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    /// The saga orchestrator (port 8080).
    Saga,
    /// Stock and reservations (port 8081).
    Inventory,
    /// Charges and refunds through a payment provider (port 8082).
    Payment,
    /// Notifications to customers (port 8083).
    Notification,
    /// The event store's HTTP face (port 8090).
    Gateway,
    /// Jepsen runs over HTTP (port 8095).
    Consistency,
    /// Pipelines into PostgreSQL and ClickHouse (port 8092).
    Etl,
}

impl ServiceName {
    /// Every service `strata dev --services` starts.
    pub const ALL: [ServiceName; 7] = [
        ServiceName::Saga,
        ServiceName::Inventory,
        ServiceName::Payment,
        ServiceName::Notification,
        ServiceName::Gateway,
        ServiceName::Consistency,
        ServiceName::Etl,
    ];

    /// Its name (in settings, environment variables and logs).
    pub fn name(self) -> &'static str {
        match self {
            ServiceName::Saga => "saga",
            ServiceName::Inventory => "inventory",
            ServiceName::Payment => "payment",
            ServiceName::Notification => "notification",
            ServiceName::Gateway => "gateway",
            ServiceName::Consistency => "consistency",
            ServiceName::Etl => "etl",
        }
    }

    /// Its default port.
    pub fn port(self) -> u16 {
        match self {
            ServiceName::Saga => strata_saga::service::PORT,
            ServiceName::Inventory => strata_inventory::PORT,
            ServiceName::Payment => strata_payment::PORT,
            ServiceName::Notification => strata_notification::PORT,
            ServiceName::Gateway => strata_gateway::PORT,
            ServiceName::Consistency => strata_consistency::service::PORT,
            ServiceName::Etl => strata_etl::service::PORT,
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
    tokio::spawn(async {
        if let Err(f) = run_fake_provider(FAKE_PROVIDER.parse().ok(), 1).await {
            tracing::error!(error = %f.message, "the fake payment provider stopped");
        }
    });
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
    let usage = |m: String| Failure {
        message: format!("strata serve {name}: {m}"),
        exit_code: 2,
    };
    let settings = Settings::resolve(name, args.service.port(), &args.common, &|k| {
        std::env::var(k).ok()
    })
    .map_err(|e| usage(e.to_string()))?;
    init_logging(settings.log_format);
    let store = store_client(&settings).map_err(usage)?;
    let metrics = Arc::new(Metrics::default());
    // Long-lived work (the gateway's subscriptions, command handling, the orchestrator's
    // loop) ends when the stop begins.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let parts = Parts {
        store: store.clone(),
        metrics: metrics.clone(),
        stopping,
    };
    let (routes, details) = assemble(args.service, &settings, &parts).map_err(usage)?;
    let service = Service {
        settings,
        routes,
        metrics,
        store,
        details,
    };
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    };
    strata_service::serve(service, shutdown)
        .await
        .map_err(Failure::new)
}

/// What every service is built over.
struct Parts {
    store: strata_client::Client,
    metrics: Arc<Metrics>,
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Parts {
    /// Handles `participant`'s saga commands with `handler` in the background.
    fn commands<H: participant::Handler>(&self, name: &'static str, handler: Arc<H>) {
        let member = format!("{name}-{}", std::process::id());
        let work = participant::serve(
            self.store.clone(),
            name,
            member,
            handler,
            self.stopping.clone(),
        );
        tokio::spawn(work);
    }
}

type Assembled = (axum::Router, Option<strata_service::server::HealthDetails>);

/// `/health`'s details from a service's own.
fn details<S: Send + Sync + 'static>(
    s: S,
    f: fn(&S) -> serde_json::Value,
) -> Option<strata_service::server::HealthDetails> {
    Some(Arc::new(move || f(&s)))
}

/// A service's routes and health details; its background work started.
fn assemble(service: ServiceName, settings: &Settings, p: &Parts) -> Result<Assembled, String> {
    Ok(match service {
        ServiceName::Saga => {
            let reporter = Arc::new(strata_saga::service::Reporter(p.metrics.clone()));
            let clock = Arc::new(strata_saga::orchestrator::SystemClock);
            let o = strata_saga::orchestrator::Orchestrator::new(p.store.clone(), clock, reporter);
            tokio::spawn(o.clone().run(p.stopping.clone()));
            let s = strata_saga::service::Sagas::new(o);
            (
                s.clone().routes(),
                details(s, strata_saga::service::Sagas::details),
            )
        }
        ServiceName::Inventory => {
            let inv = strata_inventory::Inventory::new(p.store.clone(), p.metrics.clone());
            p.commands("inventory", inv.handler());
            let member = format!("inventory-levels-{}", std::process::id());
            let levels =
                strata_inventory::projection::serve(p.store.clone(), member, p.stopping.clone());
            tokio::spawn(levels);
            (inv.routes(), None)
        }
        ServiceName::Payment => {
            let pay = strata_payment::Payment::new(settings, p.metrics.clone())?;
            p.commands("payment", Arc::new(pay.clone()));
            (
                pay.clone().routes(),
                details(pay, strata_payment::Payment::details),
            )
        }
        ServiceName::Notification => {
            let n = strata_notification::Notification::new(
                settings,
                p.store.clone(),
                p.metrics.clone(),
            )?;
            p.commands("notification", Arc::new(n.clone()));
            (
                n.clone().routes(),
                details(n, strata_notification::Notification::details),
            )
        }
        ServiceName::Gateway => {
            let g = strata_gateway::Gateway::new(
                p.store.clone(),
                p.metrics.clone(),
                p.stopping.clone(),
            );
            (
                g.clone().routes(),
                details(g, strata_gateway::Gateway::details),
            )
        }
        ServiceName::Consistency => {
            let c = strata_consistency::service::Consistency::new(
                settings,
                p.store.clone(),
                p.metrics.clone(),
                strata_engine::planted::AVAILABLE,
            )?;
            (
                c.clone().routes(),
                details(c, strata_consistency::service::Consistency::details),
            )
        }
        ServiceName::Etl => {
            let e = strata_etl::service::Etl::new(
                settings,
                p.store.clone(),
                p.metrics.clone(),
                p.stopping.clone(),
            )?;
            (
                e.clone().routes(),
                details(e, strata_etl::service::Etl::details),
            )
        }
    })
}

/// Where `strata dev --services` runs the fake payment provider (the payment service's
/// default provider).
pub const FAKE_PROVIDER: &str = "127.0.0.1:8099";

/// `strata fake-provider`: the fake payment provider until SIGINT or SIGTERM.
pub async fn run_fake_provider(
    listen: Option<std::net::SocketAddr>,
    seed: u64,
) -> Result<(), Failure> {
    let addr = listen.ok_or_else(|| Failure::usage("--listen: HOST:PORT"))?;
    strata_payment::provider::serve(addr, seed, shutdown_signal())
        .await
        .map_err(|e| Failure::new(format!("fake provider: {e}")))
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
