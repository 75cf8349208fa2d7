//! End-to-end tests: the daemon runs in-process on port 0, real clients and upstreams
//! talk through it. One binary, one module per topic.

mod admin;
mod browser;
mod capture;
mod cli;
mod durability;
mod errors;
mod fixtures;
mod house;
mod http;
mod http2;
mod keylog;
mod live;
mod overload;
mod policy;
mod ports;
mod properties;
mod reader;
mod redaction;
mod reload;
mod replay;
mod shutdown;
mod soak;
mod store;
mod support;
mod synth;
mod tls;
mod upload;
mod websocket;
