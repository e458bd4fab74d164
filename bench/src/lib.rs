//! signalcast-bench: signalcast against the servers people would pick instead, on the
//! same machine, in the same run.
//!
//! - [`targets`]: the servers (signalcast, the raw reference, Node ws, NATS, nchan):
//!   start, subscribe, publish.
//! - [`worker`]: a client process holding thousands of subscribers and recording
//!   producer-send to client-receive latency in an HDR histogram.
//! - [`run`]: measured windows: publish at a rate, count every delivery, CPU and RSS.
//! - [`reference`]: the pre-framed broadcast server that sits on the kernel's floor.
//! - [`report`]: tables, JSON, SVG charts, docs/PERFORMANCE.md.
//! - [`scenarios`]: what each command of the binary runs.
//! - [`ingest`], [`ticks`], [`storm`]: what the signal store costs producers; what a
//!   tick costs; a node restarted under 10,000 subscribers.

pub mod accounts;
pub mod ingest;
pub mod proto;
pub mod reference;
pub mod report;
pub mod run;
pub mod scenarios;
pub mod stats;
pub mod storm;
pub mod targets;
pub mod ticks;
pub mod worker;
