//! The streaming proxy: drop-in for the OpenAI and Anthropic APIs. [`pipeline`] is the sans-IO
//! core (bytes in, bytes out); [`server`] is the hyper layer around it; [`api`] knows each
//! provider's wire format; [`sse`] decodes event streams; [`config`] reads the configuration.

pub mod api;
pub mod config;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod sse;
