//! Byte sizes as Kubernetes writes them: `512Mi`, `1Gi`, `100M`, `1048576`.

/// Parses a byte size with an optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`k`, `M`, `G`,
/// `T`) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size like 512Mi or 1Gi"))?;
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        other => return Err(format!("{text:?} has unknown unit {other:?} (use Ki, Mi, Gi or k, M, G)")),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

/// CPU as Kubernetes writes it (`500m`, `2`, `0.5`), in thousandths of a core.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a CPU quantity like 500m, 1 or 0.5");
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = text.parse().map_err(|_| bad())?;
    if !cores.is_finite() || cores < 0.0 {
        return Err(bad());
    }
    Ok((cores * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("100M"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "Mi", "1.5Gi", "1Xi", "-1", "99999999999999Ti"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_cpu_quantities() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert_eq!(parse_cpu_millis("0.25"), Ok(250));
        for bad in ["", "m", "-1", "1.5x", "NaN"] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad:?}");
        }
    }
}
