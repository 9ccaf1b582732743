//! A bounded slot map: handles are indices, freed slots are reused.

use alloc::vec::Vec;

use crate::Error;

/// Up to `max` values addressed by `u32` handles.
#[derive(Debug, Clone)]
pub(crate) struct Slots<T> {
    v: Vec<Option<T>>,
    max: usize,
}

impl<T> Slots<T> {
    pub(crate) fn new(max: usize) -> Self {
        Self { v: Vec::new(), max }
    }

    /// Stores `t` in the first free slot; [`Error::TooManyStreams`] when all `max` are taken.
    pub(crate) fn insert(&mut self, t: T) -> Result<u32, Error> {
        if let Some(i) = self.v.iter().position(Option::is_none) {
            self.v[i] = Some(t);
            return Ok(i as u32);
        }
        if self.v.len() >= self.max {
            return Err(Error::TooManyStreams);
        }
        self.v.push(Some(t));
        Ok(self.v.len() as u32 - 1)
    }

    pub(crate) fn remove(&mut self, i: u32) -> Result<T, Error> {
        self.v
            .get_mut(i as usize)
            .and_then(Option::take)
            .ok_or(Error::NoSuchStream)
    }

    pub(crate) fn get(&self, i: u32) -> Result<&T, Error> {
        self.v
            .get(i as usize)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchStream)
    }

    pub(crate) fn get_mut(&mut self, i: u32) -> Result<&mut T, Error> {
        self.v
            .get_mut(i as usize)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchStream)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.v.iter().flatten()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.v.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_and_bounds() {
        let mut s = Slots::new(2);
        assert_eq!(s.insert('a'), Ok(0));
        assert_eq!(s.insert('b'), Ok(1));
        assert_eq!(s.insert('c'), Err(Error::TooManyStreams));
        assert_eq!(s.remove(0), Ok('a'));
        assert_eq!(s.remove(0), Err(Error::NoSuchStream));
        assert_eq!(s.get(7), Err(Error::NoSuchStream));
        assert_eq!(s.insert('d'), Ok(0));
        assert_eq!(s.iter_mut().count(), 2);
    }
}
