//! The one lock helper: a poisoned mutex (a thread panicked holding it) is still used,
//! because every piece of state wstap guards stays consistent between statements, and a
//! capture or counter must never take the proxy down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering it if a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
