//! The notification service (`strata serve notification`, port 8083): the saga participant
//! for `notify` — it tells the customer of a completed order on each configured channel, once
//! per notification (the saga's id) and channel.
//!
//! Channels: `log` (a JSON log line), `webhook` (`POST` of the notification to the
//! configured URL, with `Idempotency-Key: ID/webhook`) and `email` (SMTP to the saga's
//! `customer`, through the configured relay, `Message-ID: <ID.email@strata>`; a saga without a
//! customer address gets no email). Each delivery is recorded in the stream
//! `notification-ID` (`delivered {channel}`, its event id derived from ID and the channel);
//! a channel already recorded is not delivered again. Between a delivery and its record a
//! crash can happen: the command is then handled again and the channel delivered again, with
//! the same idempotency key or Message-ID — the receiver sees one notification (exactly once
//! for a receiver that honours the key, at least once for one that does not).
//!
//! Settings: `[notification] channels = "log,webhook,email"` (default `log`), `webhook =
//! "http://HOST:PORT/PATH"` (or `STRATA_NOTIFICATION_WEBHOOK`), `smtp = "HOST:PORT"` (or
//! `STRATA_NOTIFICATION_SMTP`) and `from` (default `orders@strata.local`).

pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::json;
use strata_client::{pb, Client, Error, ExpectedVersion};
use strata_saga::journal::Command;
use strata_saga::participant::{Handler, Reply};
use strata_service::http_client::HttpClient;
use strata_service::{Metrics, Settings};

/// The service's port.
pub const PORT: u16 = 8083;
/// How long one webhook call may take.
pub const WEBHOOK_DEADLINE: Duration = Duration::from_secs(3);
/// The namespace of delivery records' ids.
const DELIVERY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5c0e_7a19_d24b_4e63_b8f0_1a6d_93c2_e457);

/// A channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A log line.
    Log,
    /// An HTTP POST.
    Webhook,
    /// An email over SMTP.
    Email,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Log => "log",
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }
}

/// The service.
#[derive(Clone)]
pub struct Notification {
    store: Client,
    channels: Vec<Channel>,
    webhook: Option<String>,
    smtp: Option<String>,
    from: String,
    http: HttpClient,
    metrics: Arc<Metrics>,
}

/// A notification's record stream.
pub fn stream(id: &str) -> String {
    format!("notification-{id}")
}

impl Notification {
    /// The service with `settings` (its channels).
    pub fn new(
        settings: &Settings,
        store: Client,
        metrics: Arc<Metrics>,
    ) -> Result<Notification, String> {
        let names = settings
            .section_str("channels")
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| "log".into());
        let mut channels = Vec::new();
        for n in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            channels.push(match n {
                "log" => Channel::Log,
                "webhook" => Channel::Webhook,
                "email" => Channel::Email,
                other => {
                    return Err(format!(
                        "[notification] channels: log, webhook or email, not {other:?}"
                    ))
                }
            });
        }
        let webhook = match settings.section_str("webhook").map_err(|e| e.to_string())? {
            Some(w) => Some(w),
            None => std::env::var("STRATA_NOTIFICATION_WEBHOOK").ok(),
        };
        if channels.contains(&Channel::Webhook)
            && !webhook.as_deref().is_some_and(|w| w.starts_with("http://"))
        {
            return Err(
                "[notification] webhook: an http:// URL, needed by the webhook channel".into(),
            );
        }
        let smtp = match settings.section_str("smtp").map_err(|e| e.to_string())? {
            Some(a) => Some(a),
            None => std::env::var("STRATA_NOTIFICATION_SMTP").ok(),
        };
        if channels.contains(&Channel::Email) && !smtp.as_deref().is_some_and(|a| a.contains(':')) {
            return Err(
                "[notification] smtp: HOST:PORT of an SMTP relay, needed by the email channel"
                    .into(),
            );
        }
        let from = settings
            .section_str("from")
            .map_err(|e| e.to_string())?
            .unwrap_or_else(|| "orders@strata.local".into());
        if !smtp::plausible(&from) {
            return Err(format!(
                "[notification] from: an email address, not {from:?}"
            ));
        }
        Ok(Notification {
            store,
            channels,
            webhook,
            smtp,
            from,
            http: HttpClient::new(),
            metrics,
        })
    }

    /// Its routes (none besides the shared ones).
    pub fn routes(self) -> Router {
        Router::new()
    }

    /// What `/health` adds.
    pub fn details(&self) -> serde_json::Value {
        let names: Vec<&str> = self.channels.iter().map(|c| c.name()).collect();
        json!({ "channels": names, "webhook": self.webhook, "smtp": self.smtp })
    }

    /// The channels already delivered for notification `id`.
    async fn delivered(&self, store: &Client, id: &str) -> Result<Vec<String>, Error> {
        match store.read_stream(&stream(id), None, 64).await {
            Ok(events) => Ok(events
                .iter()
                .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.data).ok())
                .filter_map(|v| v["channel"].as_str().map(str::to_string))
                .collect()),
            Err(Error::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn deliver(
        &self,
        channel: Channel,
        command: &Command,
        correlation: &str,
    ) -> Result<(), String> {
        let id = &command.saga_id;
        let message = json!({
            "notification_id": id,
            "order_id": command.data["order_id"],
            "customer": command.data["customer"],
            "text": format!("Order {} is confirmed.", command.data["order_id"].as_str().unwrap_or_default()),
        });
        match channel {
            Channel::Log => {
                tracing::info!(notification = %id, correlation_id = correlation, message = %message, "notification delivered");
                Ok(())
            }
            Channel::Email => {
                let Some(to) = command.data["customer"]
                    .as_str()
                    .filter(|a| smtp::plausible(a))
                else {
                    tracing::warn!(notification = %id, "no customer address: no email");
                    return Ok(());
                };
                let mail = smtp::Mail {
                    from: self.from.clone(),
                    to: to.to_string(),
                    subject: format!(
                        "Order {}",
                        command.data["order_id"].as_str().unwrap_or_default()
                    ),
                    message_id: format!("{id}.email@strata"),
                    body: message["text"].as_str().unwrap_or_default().to_string(),
                };
                smtp::send(
                    self.smtp.as_deref().unwrap_or_default(),
                    &mail,
                    WEBHOOK_DEADLINE,
                )
                .await
            }
            Channel::Webhook => {
                let url = self.webhook.as_deref().unwrap_or_default();
                let key = format!("{id}/webhook");
                let a = self
                    .http
                    .call(
                        "POST",
                        url,
                        &[("idempotency-key", &key), ("x-request-id", correlation)],
                        &message,
                        WEBHOOK_DEADLINE,
                    )
                    .await?;
                if (200..300).contains(&a.status) {
                    Ok(())
                } else {
                    Err(format!("the webhook answered {}", a.status))
                }
            }
        }
    }

    async fn record(
        &self,
        store: &Client,
        id: &str,
        channel: Channel,
        correlation: &str,
    ) -> Result<(), Error> {
        let event_id = uuid::Uuid::new_v5(
            &DELIVERY_NAMESPACE,
            format!("{id}/{}", channel.name()).as_bytes(),
        );
        let event = pb::NewEvent {
            id: event_id.to_string(),
            r#type: "delivered".into(),
            data: serde_json::to_vec(&json!({ "channel": channel.name() }))
                .unwrap_or_default()
                .into(),
            metadata: serde_json::to_vec(&json!({ "correlation_id": correlation }))
                .unwrap_or_default()
                .into(),
        };
        match store
            .append(&stream(id), ExpectedVersion::Any, vec![event])
            .await
        {
            Ok(_) | Err(Error::IdempotencyConflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Handler for Notification {
    async fn handle(&self, command: &Command, correlation: &str) -> Result<Reply, String> {
        if command.action != "notify" {
            return Ok(Reply::Failed {
                reason: format!(
                    "notification does not know the command {:?}",
                    command.action
                ),
                retriable: false,
            });
        }
        let store = self.store.with_correlation_id(correlation);
        let done = self
            .delivered(&store, &command.saga_id)
            .await
            .map_err(|e| e.to_string())?;
        for channel in &self.channels {
            if done.iter().any(|d| d == channel.name()) {
                continue;
            }
            self.deliver(*channel, command, correlation).await?;
            self.metrics.add(
                "strata_notification_deliveries_total",
                "Notifications delivered, by channel.",
                &[("channel", channel.name())],
                1.0,
            );
            self.record(&store, &command.saga_id, *channel, correlation)
                .await
                .map_err(|e| e.to_string())?;
        }
        let names: Vec<&str> = self.channels.iter().map(|c| c.name()).collect();
        Ok(Reply::Done(json!({ "channels": names })))
    }
}
