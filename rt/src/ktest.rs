//! In-target test harness: test functions compiled into an image, run inside QEMU (or Xen),
//! reported on the console as `KTEST-RESULT ok|FAIL <name>` and `KTEST-DONE passed=N failed=M`,
//! which the host turns into results, together with the exit code.

use alloc::string::String;

use crate::ExitCode;

/// One in-target test.
pub struct Test {
    /// Name printed in the results.
    pub name: &'static str,
    /// The test: `Err` carries the reason for a failure.
    pub run: fn() -> Result<(), String>,
}

/// Runs every test whose name contains `filter` (all when `None`) and reports; returns
/// `Success` when none failed.
pub fn run(tests: &[Test], filter: Option<&str>) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    for t in tests.iter().filter(|t| filter.is_none_or(|f| t.name.contains(f))) {
        crate::println!("KTEST-RUN {}", t.name);
        match (t.run)() {
            Ok(()) => {
                passed += 1;
                crate::println!("KTEST-RESULT ok {}", t.name);
            }
            Err(why) => {
                failed += 1;
                crate::println!("KTEST-RESULT FAIL {}: {}", t.name, why);
            }
        }
    }
    crate::println!("KTEST-DONE passed={passed} failed={failed}");
    if failed == 0 { ExitCode::Success } else { ExitCode::Failure }
}

/// Fails a test with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(alloc::format!($($why)+));
        }
    };
}
