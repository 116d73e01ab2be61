//! Integration tests of the host-metrics agent against real interfaces: the real
//! binary, an in-process OTLP sink, a real Prometheus.

mod cardinality;
mod catalogue_doc;
mod common;
mod config_doc;
mod config_errors;
mod failing_source;
mod first_export;
mod host_view;
mod once;
mod otlp;
mod outage;
mod prometheus;
mod stuck_mount;
