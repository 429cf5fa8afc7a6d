//! Units shared by job files and the snapshot backends: LVM snapshot sizes.

/// An LVM size: digits with an optional unit (k, m, g, t; either case).
pub fn valid_size(s: &str) -> bool {
    let d = s.trim_end_matches(|c: char| "kKmMgGtT".contains(c));
    s.len() - d.len() <= 1 && !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) && d != "0"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(valid_size("512M") && valid_size("2g") && valid_size("100"));
        assert!(!valid_size("") && !valid_size("M") && !valid_size("1MB") && !valid_size("0"));
    }
}
