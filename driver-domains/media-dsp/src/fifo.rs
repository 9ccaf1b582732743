//! A bounded FIFO of interleaved samples whose content is always one contiguous slice
//! (what the resampler reads).

use alloc::vec::Vec;

/// Bounded sample queue.
#[derive(Debug, Clone)]
pub(crate) struct Fifo<T> {
    buf: Vec<T>,
    start: usize,
    cap: usize,
}

impl<T: Copy> Fifo<T> {
    /// A FIFO holding at most `cap` samples.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap),
            start: 0,
            cap,
        }
    }

    /// Samples queued.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Samples that can still be pushed.
    pub(crate) fn free(&self) -> usize {
        self.cap - self.len()
    }

    /// The queued samples, oldest first.
    pub(crate) fn data(&self) -> &[T] {
        &self.buf[self.start..]
    }

    /// Drops the `n` oldest samples (`n <= len`).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Appends as much of `s` as fits; returns how many samples were taken.
    pub(crate) fn push(&mut self, s: &[T]) -> usize {
        let n = s.len().min(self.free());
        if self.buf.len() + n > self.cap {
            let len = self.len();
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(len);
            self.start = 0;
        }
        self.buf.extend_from_slice(&s[..n]);
        n
    }

    /// Empties the FIFO.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_contiguous() {
        let mut f = Fifo::new(4);
        assert_eq!(f.push(&[1.0, 2.0, 3.0]), 3);
        f.consume(2);
        assert_eq!(f.push(&[4.0, 5.0, 6.0, 7.0]), 3);
        assert_eq!(f.data(), &[3.0, 4.0, 5.0, 6.0]);
        assert_eq!(f.free(), 0);
        f.consume(10);
        assert_eq!(f.len(), 0);
        assert_eq!(f.push(&[8.0]), 1);
        assert_eq!(f.data(), &[8.0]);
    }
}
