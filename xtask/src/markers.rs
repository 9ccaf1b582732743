//! Parsing of the serial markers images print (see the brief's "Conventions between images and
//! xtask"). Markers may be preceded by the log prefix (`[   0.012345] INFO  net-dd: `), so every
//! parser looks for the marker anywhere in the line.

/// `ICONNECT-READY <image> boot_us=<N>` → (image, N).
pub fn parse_ready(line: &str) -> Option<(String, u64)> {
    let rest = after(line, "ICONNECT-READY ")?;
    let mut toks = rest.split_whitespace();
    let image = toks.next()?.to_string();
    let us = toks.find_map(|t| t.strip_prefix("boot_us="))?.parse().ok()?;
    Some((image, us))
}

/// `KTEST-DONE passed=<N> failed=<M>` → (N, M).
pub fn parse_ktest_done(line: &str) -> Option<(u32, u32)> {
    let rest = after(line, "KTEST-DONE ")?;
    let mut passed = None;
    let mut failed = None;
    for t in rest.split_whitespace() {
        if let Some(v) = t.strip_prefix("passed=") {
            passed = v.parse().ok();
        } else if let Some(v) = t.strip_prefix("failed=") {
            failed = v.parse().ok();
        }
    }
    Some((passed?, failed?))
}

#[derive(Debug, PartialEq, Eq)]
pub enum KtestResult {
    Ok(String),
    Fail { name: String, why: String },
}

/// `KTEST-RESULT ok <name>` / `KTEST-RESULT FAIL <name>: <why>`.
pub fn parse_ktest_result(line: &str) -> Option<KtestResult> {
    let rest = after(line, "KTEST-RESULT ")?;
    if let Some(name) = rest.strip_prefix("ok ") {
        return Some(KtestResult::Ok(name.trim().to_string()));
    }
    let rest = rest.strip_prefix("FAIL ")?;
    let (name, why) = rest.split_once(':').unwrap_or((rest, ""));
    Some(KtestResult::Fail { name: name.trim().to_string(), why: why.trim().to_string() })
}

#[derive(Debug, PartialEq, Eq)]
pub struct Fault {
    /// Exception name as printed (e.g. `PageFault` / `page-fault`).
    pub name: String,
    /// `addr=0x...` if present (page faults: CR2).
    pub addr: Option<u64>,
}

/// `ICONNECT-FAULT <exception name> ... addr=0x...`.
pub fn parse_fault(line: &str) -> Option<Fault> {
    let rest = after(line, "ICONNECT-FAULT")?;
    let mut toks = rest.split_whitespace();
    let name = toks.next().unwrap_or("").to_string();
    let addr = rest
        .split_whitespace()
        .find_map(|t| t.strip_prefix("addr="))
        .and_then(|v| {
            let v = v.trim_end_matches([',', ';', ')']);
            u64::from_str_radix(v.strip_prefix("0x").or_else(|| v.strip_prefix("0X"))?, 16).ok()
        });
    Some(Fault { name, addr })
}

/// A marker line in the `MARKER word... key=value...` shape (`ICONNECT-PORT 2 up mac=.. qos=..`,
/// `ICONNECT-RESULT ok name=g1 ...`): the words before the first `key=value`, and the fields.
/// A `reason=` value is free text: it runs up to the next `key=value` token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub words: Vec<String>,
    pub kv: std::collections::BTreeMap<String, String>,
}

impl Fields {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }
    /// A numeric field.
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
    pub fn word(&self, i: usize) -> Option<&str> {
        self.words.get(i).map(String::as_str)
    }
}

/// Parse `marker` (e.g. `ICONNECT-PORT`, matched as a whole token) anywhere in `line`.
pub fn parse_fields(line: &str, marker: &str) -> Option<Fields> {
    let mut at = 0;
    let rest = loop {
        let i = line[at..].find(marker)? + at;
        let end = i + marker.len();
        let next = line[end..].chars().next();
        if next.is_none() || next == Some(' ') {
            break &line[end..];
        }
        at = end;
    };
    let mut f = Fields::default();
    let is_kv = |t: &str| t.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    let mut toks = rest.split_whitespace().peekable();
    while let Some(tok) = toks.next() {
        match tok.split_once('=') {
            Some(("reason", v)) => {
                // Free text: up to the next key=value token.
                let mut v = v.to_string();
                while let Some(t) = toks.next_if(|t| !is_kv(t)) {
                    v.push(' ');
                    v.push_str(t);
                }
                f.kv.insert("reason".into(), v);
            }
            Some((k, v)) if is_kv(tok) => {
                f.kv.insert(k.to_string(), v.to_string());
            }
            _ if f.kv.is_empty() => f.words.push(tok.to_string()),
            _ => {}
        }
    }
    Some(f)
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_with_and_without_prefix() {
        assert_eq!(parse_ready("ICONNECT-READY net-dd boot_us=1234"), Some(("net-dd".into(), 1234)));
        assert_eq!(
            parse_ready("[   0.012345] INFO  net-dd: ICONNECT-READY net-dd boot_us=987\r"),
            Some(("net-dd".into(), 987))
        );
        assert_eq!(parse_ready("ICONNECT-READY net-dd"), None);
        assert_eq!(parse_ready("ICONNECT-READY net-dd boot_us=abc"), None);
        assert_eq!(parse_ready("nothing here"), None);
    }

    #[test]
    fn ktest_done() {
        assert_eq!(parse_ktest_done("KTEST-DONE passed=12 failed=0"), Some((12, 0)));
        assert_eq!(parse_ktest_done("[ 0.1] INFO  ktest: KTEST-DONE passed=3 failed=2"), Some((3, 2)));
        assert_eq!(parse_ktest_done("KTEST-DONE passed=3"), None);
        assert_eq!(parse_ktest_done("KTEST-DONE passed=x failed=0"), None);
    }

    #[test]
    fn ktest_results() {
        assert_eq!(parse_ktest_result("KTEST-RESULT ok frame_alloc"), Some(KtestResult::Ok("frame_alloc".into())));
        assert_eq!(
            parse_ktest_result("[ 0.2] INFO  ktest: KTEST-RESULT FAIL heap: got 3, want 4"),
            Some(KtestResult::Fail { name: "heap".into(), why: "got 3, want 4".into() })
        );
        assert_eq!(parse_ktest_result("KTEST-RESULT maybe x"), None);
    }

    #[test]
    fn field_markers() {
        let f = parse_fields("[ 1.0] INFO  net-dd: ICONNECT-PORT 2 up mac=52:54:00:12:34:21 qos=granted granted_bps=4000000", "ICONNECT-PORT")
            .unwrap();
        assert_eq!(f.words, ["2", "up"]);
        assert_eq!(f.get("mac"), Some("52:54:00:12:34:21"));
        assert_eq!(f.num("granted_bps"), Some(4_000_000));
        let d = parse_fields("ICONNECT-PORT 1 down reason=bad ring index 77 (req_prod)", "ICONNECT-PORT").unwrap();
        assert_eq!(d.words, ["1", "down"]);
        assert_eq!(d.get("reason"), Some("bad ring index 77 (req_prod)"));
        let r = parse_fields("ICONNECT-PORT 3 up mac=x qos=refused reason=over capacity error_key=qos-guaranteed-bps", "ICONNECT-PORT").unwrap();
        assert_eq!((r.get("reason"), r.get("error_key")), (Some("over capacity"), Some("qos-guaranteed-bps")));
        // ICONNECT-PORTSTAT is not ICONNECT-PORT.
        assert!(parse_fields("ICONNECT-PORTSTAT 1 tx_bps=5", "ICONNECT-PORT").is_none());
        let s = parse_fields("x ICONNECT-PORTSTAT 1 tx_bps=5 rx_bps=6 drops=0", "ICONNECT-PORTSTAT").unwrap();
        assert_eq!((s.word(0), s.num("tx_bps"), s.num("drops")), (Some("1"), Some(5), Some(0)));
        let r = parse_fields("ICONNECT-RESULT ok name=g1 work=tcp secs=2.5", "ICONNECT-RESULT").unwrap();
        assert_eq!((r.word(0), r.get("name"), r.get("secs")), (Some("ok"), Some("g1"), Some("2.5")));
        assert!(parse_fields("nothing", "ICONNECT-RESULT").is_none());
    }

    #[test]
    fn fault_lines() {
        let f = parse_fault("[ 0.3] ERROR rt: ICONNECT-FAULT PageFault rip=0x100234 addr=0xdeadbeef000 err=0x0")
            .unwrap();
        assert_eq!(f, Fault { name: "PageFault".into(), addr: Some(0x0dea_dbee_f000) });
        let g = parse_fault("ICONNECT-FAULT GeneralProtection rip=0x1").unwrap();
        assert_eq!(g.addr, None);
        assert_eq!(parse_fault("ICONNECT-FAULT page-fault addr=0xzz").unwrap().addr, None);
        assert!(parse_fault("no fault").is_none());
    }
}
