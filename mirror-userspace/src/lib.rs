//! mirror: shadow production HTTP traffic from the packet path.
//!
//! The data path, in module order: [`capture`] (kernel events) → [`flow`] (TCP reassembly) →
//! [`http`] (request framing) → [`route`] (match, sample, rewrite) → `replay` (send to mirrors).
//! [`pipeline`] strings the sans-IO stages together; [`daemon`] is the thin tokio/aya shell.

#![warn(missing_docs)]

pub mod capture;
pub mod compare;
pub mod comparing;
pub mod config;
pub mod daemon;
pub mod flow;
pub mod http;
pub mod memory;
pub(crate) mod metrics;
pub mod offline;
pub mod pipeline;
pub(crate) mod replay;
pub mod route;
pub mod stats;
