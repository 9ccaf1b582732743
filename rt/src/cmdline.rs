//! Kernel command line: space-separated `key=value` words, bare `flag` words.

/// Returns the value of `key` in `cmdline`, `Some("")` for a bare flag, `None` when absent.
/// The last occurrence wins, as on Linux.
pub fn get<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    for word in cmdline.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if k == key => found = Some(v),
            None if word == key => found = Some(""),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::get;

    #[test]
    fn finds_values_flags_and_last_occurrence() {
        let c = "ip=10.0.2.15/24  gw=10.0.2.2 verbose echo_port=7 ip=10.0.0.9/8";
        assert_eq!(get(c, "gw"), Some("10.0.2.2"));
        assert_eq!(get(c, "verbose"), Some(""));
        assert_eq!(get(c, "ip"), Some("10.0.0.9/8"));
        assert_eq!(get(c, "echo"), None);
        assert_eq!(get(c, "echo_port"), Some("7"));
        assert_eq!(get("", "x"), None);
        assert_eq!(get("a==b", "a"), Some("=b"));
    }
}
