//! Saga types: ordered steps, each an action on a participant with its compensation, a
//! timeout and retry policies. A step without a compensation is a *pivot* or comes after one:
//! once such a step has been requested the saga can only go forward (its failures are retried
//! up to the cap, then the saga needs attention), since what came before cannot be undone
//! after it.

use serde::Serialize;

/// Who carries out a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Participant {
    /// The inventory service (stock reservations).
    Inventory,
    /// The payment service (charges and refunds).
    Payment,
    /// The notification service (webhook, email, log).
    Notification,
}

impl Participant {
    /// Its name in stream names and commands.
    pub fn name(self) -> &'static str {
        match self {
            Participant::Inventory => "inventory",
            Participant::Payment => "payment",
            Participant::Notification => "notification",
        }
    }
}

/// When and how often a failed or timed-out attempt is tried again: exponential backoff
/// (`base * 2^(attempt-1)`, at most `max`) with up to `jitter_percent` % taken off, at most
/// `attempts_max` attempts in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts_max: u32,
    /// The first retry's delay, milliseconds.
    pub backoff_base_ms: u64,
    /// The longest delay, milliseconds.
    pub backoff_max_ms: u64,
    /// Up to this share of a delay (percent) is taken off, chosen by the seed.
    pub jitter_percent: u64,
}

impl RetryPolicy {
    /// The delay before attempt `next` (2 for the first retry), milliseconds; `seed` picks
    /// the jitter (the saga's id and the attempt: the same on every orchestrator).
    pub fn delay_ms(&self, next: u32, seed: u64) -> u64 {
        let doublings = next.saturating_sub(2).min(32);
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms);
        let jitter = full * self.jitter_percent.min(100) / 100;
        full - if jitter == 0 {
            0
        } else {
            mix(seed) % (jitter + 1)
        }
    }
}

/// A 64-bit mix (splitmix64's finaliser): the jitter's randomness, deterministic per seed.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One step of a saga type.
#[derive(Debug, Clone, Serialize)]
pub struct StepDef {
    /// Its name (in the journal and the API).
    pub name: &'static str,
    /// Who carries it out.
    pub participant: Participant,
    /// The command that does it.
    pub action: &'static str,
    /// The command that undoes it; `None`: a pivot (or after one): it cannot be undone.
    pub compensation: Option<&'static str>,
    /// How long an attempt may take before it counts as timed out, milliseconds.
    pub timeout_ms: u64,
    /// Retries of the action.
    pub retry: RetryPolicy,
    /// Retries of the compensation (past the cap the saga needs attention).
    pub compensation_retry: RetryPolicy,
}

/// A saga type: its name, steps in order, and what its data must hold.
#[derive(Debug, Clone, Serialize)]
pub struct SagaType {
    /// Its name (`order_processing`).
    pub name: &'static str,
    /// The steps, in order.
    pub steps: Vec<StepDef>,
    /// Fields the data must have, with their JSON kind (`string`, `number`).
    pub required: Vec<(&'static str, &'static str)>,
}

impl SagaType {
    /// Index of the first step that cannot be undone (the pivot), if any: from there on the
    /// saga only goes forward.
    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.compensation.is_none())
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<(usize, &StepDef)> {
        self.steps.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// Checks a saga's data: an object with every required field of its kind.
    pub fn check(&self, data: &serde_json::Value) -> Result<(), String> {
        let obj = data
            .as_object()
            .ok_or_else(|| format!("data: a JSON object for {}", self.name))?;
        for (field, kind) in &self.required {
            let ok = match (obj.get(*field), *kind) {
                (Some(v), "string") => v.as_str().is_some_and(|s| !s.is_empty()),
                (Some(v), "number") => v.as_u64().is_some_and(|n| n > 0),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "data.{field}: {} required for {}",
                    if *kind == "number" {
                        "a positive integer"
                    } else {
                        "a non-empty string"
                    },
                    self.name
                ));
            }
        }
        Ok(())
    }
}

/// The retries of a participant call: 5 attempts, 200 ms doubling up to 5 s, 20 % jitter.
const CALLS: RetryPolicy = RetryPolicy {
    attempts_max: 5,
    backoff_base_ms: 200,
    backoff_max_ms: 5_000,
    jitter_percent: 20,
};

/// Compensations try longer before a person is asked to look.
const UNDO: RetryPolicy = RetryPolicy {
    attempts_max: 8,
    ..CALLS
};

/// `order_processing`: reserve the stock, charge the payment, commit the reservation (the
/// pivot: the order is then taken), notify the customer. Data: `order_id`, `sku`, `quantity`,
/// `amount` (minor units), and optionally `customer` (an email address).
pub fn order_processing() -> SagaType {
    let step = |name, participant, action, compensation, timeout_ms| StepDef {
        name,
        participant,
        action,
        compensation,
        timeout_ms,
        retry: CALLS,
        compensation_retry: UNDO,
    };
    SagaType {
        name: "order_processing",
        steps: vec![
            step(
                "reserve_stock",
                Participant::Inventory,
                "reserve",
                Some("release"),
                5_000,
            ),
            step(
                "charge_payment",
                Participant::Payment,
                "charge",
                Some("refund"),
                10_000,
            ),
            step(
                "commit_stock",
                Participant::Inventory,
                "commit",
                None,
                5_000,
            ),
            step(
                "notify_customer",
                Participant::Notification,
                "notify",
                None,
                10_000,
            ),
        ],
        required: vec![
            ("order_id", "string"),
            ("sku", "string"),
            ("quantity", "number"),
            ("amount", "number"),
        ],
    }
}

/// The saga types this build knows, by name.
pub fn saga_type(name: &str) -> Option<SagaType> {
    match name {
        "order_processing" => Some(order_processing()),
        _ => None,
    }
}

/// Every saga type's name.
pub const TYPES: [&str; 1] = ["order_processing"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let p = RetryPolicy {
            jitter_percent: 0,
            ..CALLS
        };
        let d: Vec<u64> = (2..=8).map(|n| p.delay_ms(n, 1)).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 5000, 5000]);
        for seed in 0..100 {
            let j = CALLS.delay_ms(3, seed);
            assert!((320..=400).contains(&j), "{j}");
            assert_eq!(j, CALLS.delay_ms(3, seed), "deterministic");
        }
    }

    #[test]
    fn order_processing_has_its_pivot_and_checks_its_data() {
        let t = order_processing();
        assert_eq!(t.pivot(), Some(2));
        let ok = serde_json::json!({"order_id": "o1", "sku": "a", "quantity": 2, "amount": 500});
        assert!(t.check(&ok).is_ok());
        let bad = serde_json::json!({"order_id": "o1", "sku": "a", "quantity": 0, "amount": 500});
        assert!(t.check(&bad).unwrap_err().contains("data.quantity"));
        assert!(t.check(&serde_json::json!([1])).is_err());
        assert!(saga_type("nope").is_none());
    }
}
