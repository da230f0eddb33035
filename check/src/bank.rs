//! The bank checker: transfers between accounts conserve money, so every committed read of
//! all the balances (a snapshot) must sum to the total the accounts began with, and with
//! transfers that never overdraw, no balance may be negative. A read that breaks either is a
//! violation, shown with the balances it saw.

/// One committed read of every account's balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Index of the read in the history (its completion event).
    pub index: usize,
    /// Each account's balance, by account number.
    pub balances: Vec<i64>,
}

/// One violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `wrong-total` or `negative-balance`.
    pub class: &'static str,
    /// The read that shows it.
    pub read: Read,
    /// In words.
    pub explanation: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.explanation)
    }
}

/// Most violations reported (the rest are counted).
pub const VIOLATIONS_MAX: usize = 16;

/// The verdict.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The first [`VIOLATIONS_MAX`] violations.
    pub violations: Vec<Violation>,
    /// How many there were in all.
    pub count: usize,
    /// How many of each class.
    pub counts: Vec<(String, usize)>,
    /// Reads checked.
    pub reads: usize,
}

impl Verdict {
    /// Money conserved on every read.
    pub fn valid(&self) -> bool {
        self.count == 0
    }
}

/// Checks reads against the `total` every snapshot must hold; `accounts` is how many there are.
pub fn check(reads: &[Read], accounts: usize, total: i64) -> Verdict {
    let mut verdict = Verdict {
        reads: reads.len(),
        ..Verdict::default()
    };
    for read in reads {
        let sum: i64 = read.balances.iter().sum();
        let found = if read.balances.len() != accounts {
            Some((
                "wrong-total",
                format!(
                    "read {} saw {} accounts, not {accounts}",
                    read.index,
                    read.balances.len()
                ),
            ))
        } else if sum != total {
            Some((
                "wrong-total",
                format!(
                    "read {} saw balances {:?} summing to {sum}, not {total}",
                    read.index, read.balances
                ),
            ))
        } else if let Some((a, b)) = read.balances.iter().enumerate().find(|(_, b)| **b < 0) {
            Some((
                "negative-balance",
                format!("read {} saw account {a} at {b}", read.index),
            ))
        } else {
            None
        };
        if let Some((class, explanation)) = found {
            verdict.count += 1;
            match verdict.counts.iter_mut().find(|(c, _)| c == class) {
                Some((_, n)) => *n += 1,
                None => verdict.counts.push((class.to_string(), 1)),
            }
            if verdict.violations.len() < VIOLATIONS_MAX {
                verdict.violations.push(Violation {
                    class,
                    read: read.clone(),
                    explanation,
                });
            }
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(index: usize, balances: &[i64]) -> Read {
        Read {
            index,
            balances: balances.to_vec(),
        }
    }

    #[test]
    fn conserved_reads_pass_and_each_kind_of_violation_is_found() {
        let good = [read(1, &[10, 10, 10]), read(2, &[0, 5, 25])];
        assert!(check(&good, 3, 30).valid());
        let v = check(&[read(1, &[10, 10, 10]), read(2, &[10, 20, 10])], 3, 30);
        assert_eq!(v.count, 1);
        assert_eq!(v.violations[0].class, "wrong-total");
        assert_eq!(v.violations[0].read.index, 2);
        let v = check(&[read(3, &[-5, 20, 15])], 3, 30);
        assert_eq!(v.violations[0].class, "negative-balance");
        let v = check(&[read(4, &[30])], 3, 30);
        assert_eq!(v.violations[0].class, "wrong-total");
    }

    #[test]
    fn violations_are_capped_but_counted() {
        let reads: Vec<Read> = (0..40).map(|i| read(i, &[1, 1])).collect();
        let v = check(&reads, 2, 3);
        assert_eq!(v.count, 40);
        assert_eq!(v.counts, [("wrong-total".to_string(), 40)]);
        assert_eq!(v.violations.len(), VIOLATIONS_MAX);
    }
}
