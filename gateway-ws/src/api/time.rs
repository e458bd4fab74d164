//! The times the API accepts: integer microseconds since the Unix epoch, or RFC 3339
//! (`2026-12-06T09:15:00Z`, `2026-12-06T14:45:00.5+05:30`).

use engine::model::UnixNanos;

/// Parses `from`/`to`.
pub fn parse(s: &str) -> Result<UnixNanos, String> {
    if let Ok(us) = s.parse::<i64>() {
        return us.checked_mul(1_000).map(UnixNanos).ok_or_else(|| format!("{s} µs is out of range"));
    }
    rfc3339(s).ok_or_else(|| format!("{s:?} is neither integer microseconds nor an RFC 3339 time"))
}

fn rfc3339(s: &str) -> Option<UnixNanos> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes().all(|c| c.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let mut frac = digits.chars().take(9).collect::<String>();
        while frac.len() < 9 {
            frac.push('0');
        }
        nanos = frac.parse().ok()?;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        // Bytes, not `str` slices: a cut inside a multi-byte character would panic.
        tz if tz.len() == 6 && matches!(tz.as_bytes()[0], b'+' | b'-') && tz.as_bytes()[3] == b':' => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            let sign = if tz.as_bytes()[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos).map(UnixNanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_byte_character_where_an_offset_goes_is_an_error_not_a_panic() {
        for s in [
            "2026-12-06T09:15:00\u{e9}:000",
            "2026-12-06T09:15:00+0\u{e9}00",
            "2026-12-06T09:15:00\u{1F600}:0",
        ] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn rfc3339_and_microseconds_name_the_same_instants() {
        assert_eq!(parse("0"), Ok(UnixNanos(0)));
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(UnixNanos(0)));
        let t = 1_765_012_500_000_000i64; // 2025-12-06T09:15:00Z in µs
        assert_eq!(parse("2025-12-06T09:15:00Z"), Ok(UnixNanos(t * 1_000)));
        assert_eq!(parse(&t.to_string()), Ok(UnixNanos(t * 1_000)));
        assert_eq!(parse("2025-12-06T14:45:00.5+05:30"), Ok(UnixNanos(t * 1_000 + 500_000_000)));
        assert_eq!(parse("2000-02-29T00:00:00Z"), Ok(UnixNanos(951_782_400 * 1_000_000_000)));
        for bad in [
            "",
            "yesterday",
            "2025-13-01T00:00:00Z",
            "2025-12-06T09:15:00",
            "2025-12-06T09:15:00+0530",
            "2025-12-06T09:15:00.Z",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
