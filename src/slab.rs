//! A slab of slots addressed by small integer keys (the mio tokens), with deferred frees so a key is
//! never reused inside the batch of events that closed it.

/// Slots with a free list. `remove` parks a key until [`Slab::release_parked`] runs after the batch.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    parked: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new(), parked: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(k) => {
                self.slots[k] = Some(v);
                k
            }
            None => {
                self.slots.push(Some(v));
                self.slots.len() - 1
            }
        }
    }

    /// Key the next insert will use.
    pub fn vacant_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    pub fn get(&self, k: usize) -> Option<&T> {
        self.slots.get(k).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, k: usize) -> Option<&mut T> {
        self.slots.get_mut(k).and_then(Option::as_mut)
    }

    /// Takes the value out; the key becomes reusable only after `release_parked`.
    pub fn remove(&mut self, k: usize) -> Option<T> {
        let v = self.slots.get_mut(k)?.take()?;
        self.len -= 1;
        self.parked.push(k);
        Some(v)
    }

    pub fn release_parked(&mut self) {
        self.free.append(&mut self.parked);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slots.iter().enumerate().filter(|(_, s)| s.is_some()).map(|(k, _)| k).collect()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots.iter_mut().enumerate().filter_map(|(k, s)| s.as_mut().map(|v| (k, v)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots.iter().enumerate().filter_map(|(k, s)| s.as_ref().map(|v| (k, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_not_reused_within_a_batch() {
        let mut s = Slab::default();
        let a = s.insert(1);
        s.remove(a);
        let b = s.insert(2);
        assert_ne!(a, b);
        s.release_parked();
        assert_eq!(s.insert(3), a);
        assert_eq!(s.len(), 2);
    }
}
