//! Units shared by job files and the snapshot backends: LVM snapshot sizes.

/// An LVM size: digits with an optional unit (k, m, g, t; either case).
pub fn valid_size(s: &str) -> bool {
    let d = s.trim_end_matches(|c: char| "kKmMgGtT".contains(c));
    let shift = match &s[d.len()..] {
        "" => 0,
        u => match u.to_ascii_lowercase().as_str() {
            "k" => 10,
            "m" => 20,
            "g" => 30,
            _ => 40,
        },
    };
    // A number of bytes that fits in 64 bits (LVM's own limit is far below).
    let fits = d.parse::<u64>().ok().and_then(|n| n.checked_mul(1u64 << shift)).is_some();
    s.len() - d.len() <= 1 && !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && d != "0" && fits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(valid_size("512M") && valid_size("2g") && valid_size("100"));
        assert!(!valid_size("") && !valid_size("M") && !valid_size("1MB") && !valid_size("0"));
        assert!(
            !valid_size("99999999999999999999999T") && !valid_size("16777216T") && valid_size("16777215T")
        );
    }
}
