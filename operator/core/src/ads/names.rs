//! Interned name sets: the resource names a stream subscribes to, shared by every stream
//! that subscribes to the same ones (the proxies of one profile all ask for the same load
//! assignments), so a stream holds one pointer instead of its own copy of a thousand names.
//!
//! ```text
//! a stream's new set --intern--> hash --> pool (weak references) --> the existing Arc, or
//!                                                                    this one, registered
//! ```
//!
//! The pool holds weak references only: a set nobody uses is freed, and dead entries are
//! swept as the pool grows.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

/// A set of resource names, shared.
pub type NameSet = Arc<BTreeSet<Arc<str>>>;

#[derive(Default)]
struct Pool {
    sets: HashMap<u64, Vec<Weak<BTreeSet<Arc<str>>>>>,
    /// Entries registered since the last sweep.
    since_sweep: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(Mutex::default)
}

fn hash_of(set: &BTreeSet<Arc<str>>) -> u64 {
    let mut h = ahash::AHasher::default();
    set.len().hash(&mut h);
    for name in set {
        name.hash(&mut h);
    }
    h.finish()
}

/// The shared copy of `set`: an existing equal set if some stream holds one, else `set`.
pub fn intern(set: BTreeSet<Arc<str>>) -> NameSet {
    if set.is_empty() {
        static EMPTY: OnceLock<NameSet> = OnceLock::new();
        return EMPTY.get_or_init(NameSet::default).clone();
    }
    let key = hash_of(&set);
    let mut pool = pool().lock().unwrap_or_else(PoisonError::into_inner);
    let bucket = pool.sets.entry(key).or_default();
    if let Some(existing) = bucket
        .iter()
        .filter_map(Weak::upgrade)
        .find(|existing| **existing == set)
    {
        return existing;
    }
    let shared = Arc::new(set);
    bucket.retain(|w| w.strong_count() > 0);
    bucket.push(Arc::downgrade(&shared));
    pool.since_sweep += 1;
    if pool.since_sweep > 1024.max(pool.sets.len()) {
        pool.sets.retain(|_, bucket| {
            bucket.retain(|w| w.strong_count() > 0);
            !bucket.is_empty()
        });
        pool.since_sweep = 0;
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn equal_sets_share_one_allocation_and_unused_ones_are_freed() {
        let a = intern(set(&["x", "y"]));
        let b = intern(set(&["y", "x"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &intern(set(&["x"]))));
        let weak = Arc::downgrade(&a);
        drop((a, b));
        assert!(
            weak.upgrade().is_none(),
            "the pool does not keep a set alive"
        );
    }
}
