//! The proxy: one client connection, its upstream connection, and the relay of a session.

pub mod conn;
pub mod error;
pub mod headers;
pub mod metered;
pub mod shutdown;
pub mod splice;
pub mod traffic;
