//! A minimal executor: the domain's tasks are polled with the current time and say when they next
//! need to run; in between the CPU sleeps until the earliest deadline or a device interrupt.
//!
//! This is the `poll(now)` style smoltcp uses: time and events come in from outside, so the same
//! task logic runs unchanged in a seeded host simulation.

use crate::ExitCode;
use crate::time::Instant;

/// What a task wants after a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Poll again at this instant at the latest (earlier if an interrupt arrives).
    At(Instant),
    /// Poll again when an interrupt arrives, however long that takes.
    Idle,
    /// Poll again at once: the task made progress and has more to do.
    Busy,
    /// The task is finished; the executor stops with this code.
    Exit(ExitCode),
}

/// A piece of a domain driven by the executor.
pub trait Task {
    /// Does whatever can be done at `now` without blocking.
    fn poll(&mut self, now: Instant) -> Step;
}

impl<F: FnMut(Instant) -> Step> Task for F {
    fn poll(&mut self, now: Instant) -> Step {
        self(now)
    }
}

/// Combines the steps of several tasks into what the executor does next.
pub fn combine(steps: impl IntoIterator<Item = Step>) -> Step {
    let mut next = Step::Idle;
    for step in steps {
        next = match (next, step) {
            (Step::Exit(c), _) | (_, Step::Exit(c)) => return Step::Exit(c),
            (Step::Busy, _) | (_, Step::Busy) => Step::Busy,
            (Step::At(a), Step::At(b)) => Step::At(a.min(b)),
            (Step::At(a), Step::Idle) | (Step::Idle, Step::At(a)) => Step::At(a),
            (Step::Idle, Step::Idle) => Step::Idle,
        };
    }
    next
}

/// Polls every task until one exits; sleeps between rounds until the earliest deadline or an
/// interrupt.
#[cfg(target_os = "none")]
pub fn run(tasks: &mut [&mut dyn Task]) -> ExitCode {
    loop {
        let now = crate::time::now();
        match combine(tasks.iter_mut().map(|t| t.poll(now))) {
            Step::Exit(code) => return code,
            Step::Busy => {}
            Step::At(deadline) => crate::event::wait_until(Some(deadline)),
            Step::Idle => crate::event::wait_until(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_takes_exit_then_busy_then_earliest_deadline() {
        let t = |us| Step::At(Instant::from_micros(us));
        assert_eq!(combine([]), Step::Idle);
        assert_eq!(combine([Step::Idle, t(50), t(20), Step::Idle]), t(20));
        assert_eq!(combine([t(5), Step::Busy, Step::Idle]), Step::Busy);
        assert_eq!(combine([Step::Busy, Step::Exit(ExitCode::Failure), t(1)]), Step::Exit(ExitCode::Failure));
    }

    #[test]
    fn closures_are_tasks() {
        let mut calls = 0;
        let mut task = |now: Instant| {
            calls += 1;
            if now.as_micros() > 10 { Step::Exit(ExitCode::Success) } else { Step::Idle }
        };
        assert_eq!(task.poll(Instant::from_micros(1)), Step::Idle);
        assert_eq!(task.poll(Instant::from_micros(11)), Step::Exit(ExitCode::Success));
        assert_eq!(calls, 2);
    }
}
