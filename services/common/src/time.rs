//! Times as RFC 3339 text, both ways, without a date library: what `?as_of=` and the
//! command line take, and how answers show event timestamps (UTC, microseconds).

/// Microseconds since the Unix epoch of an RFC 3339 time (`YYYY-MM-DDTHH:MM:SS[.fraction]`
/// then `Z` or `±HH:MM`).
pub fn parse_rfc3339_us(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time such as 2026-11-25T14:00:00Z");
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let num = |from: usize, to: usize| -> Result<i64, String> {
        text.get(from..to)
            .filter(|d| d.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut at = 19;
    let mut micros = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        let digits = &text[start..at];
        if digits.is_empty() {
            return Err(bad());
        }
        let six: String = digits
            .chars()
            .chain(std::iter::repeat('0'))
            .take(6)
            .collect();
        micros = six.parse().map_err(|_| bad())?;
    }
    let offset_s = match &text[at..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && matches!(&zone[..1], "+" | "-") && &zone[3..4] == ":" => {
            let sign = if &zone[..1] == "-" { -1 } else { 1 };
            sign * (num(at + 1, at + 3)? * 3600 + num(at + 4, at + 6)? * 60)
        }
        _ => return Err(bad()),
    };
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    let us = secs
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(micros))
        .ok_or_else(bad)?;
    u64::try_from(us).map_err(|_| format!("`{text}` is before 1970"))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `us` microseconds since the Unix epoch as RFC 3339 in UTC with microseconds
/// (`2026-11-25T14:00:00.250000Z`).
pub fn format_rfc3339_us(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        us % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_unix_microseconds() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_us("2026-11-25T14:00:00Z"),
            Ok(1_795_615_200_000_000)
        );
        assert_eq!(
            parse_rfc3339_us("2026-11-25T15:00:00.25+01:00"),
            Ok(1_795_615_200_250_000)
        );
        assert_eq!(
            parse_rfc3339_us("2000-02-29T00:00:00Z"),
            Ok(951_782_400_000_000)
        );
        for bad in [
            "2026-11-25",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-25T14:00:00",
        ] {
            assert!(parse_rfc3339_us(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting_is_the_inverse_of_parsing() {
        assert_eq!(format_rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_rfc3339_us(1_795_615_200_250_000),
            "2026-11-25T14:00:00.250000Z"
        );
        for us in [
            0,
            951_782_400_000_000,
            1_795_615_200_250_000,
            4_102_444_799_999_999,
        ] {
            assert_eq!(parse_rfc3339_us(&format_rfc3339_us(us)), Ok(us));
        }
    }
}
