//! What redaction and fingerprints cost, per exported string and per error.
//!
//! Redaction runs in the exporters (and the fmt writer), so these are costs per
//! exported string, never per call: an unsampled call exports no span. A
//! fingerprint is computed once per returned error.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use otel_instrument::errors::fingerprint;
use otel_instrument::redact::Redactor;

fn benches(c: &mut Criterion) {
    let r = Redactor::default();
    let mut g = c.benchmark_group("redaction");
    // The common case: an attribute or message with nothing to redact.
    g.bench_function("a_clean_attribute", |b| {
        b.iter(|| r.redact_attribute(black_box("http.route"), black_box("/api/orders/{id}")))
    });
    g.bench_function("b_clean_log_line_200b", |b| {
        let line = "2026-12-07T06:15:00.123Z  INFO demo::gateway: served GET /api/orders/1001 \
                    in 3.2 ms status=200 bytes=1843 function=show_item trace_id=4bf92f3577b34da6a3ce929d0e0e4736";
        b.iter(|| r.redact(black_box(line)))
    });
    g.bench_function("c_sensitive_key", |b| {
        b.iter(|| {
            r.redact_attribute(
                black_box("http.request.header.authorization"),
                black_box("Bearer abc"),
            )
        })
    });
    g.bench_function("d_message_with_four_secrets", |b| {
        let msg = "charge for jane.doe@example.com with 4111 1111 1111 1111 failed: \
                   Authorization: Bearer abcDEF123.xyz_987 at postgres://app:hunter2@db:5432/orders";
        b.iter(|| r.redact(black_box(msg)))
    });
    g.finish();
    let mut g = c.benchmark_group("fingerprint");
    g.bench_function("a_typical_error", |b| {
        b.iter(|| {
            fingerprint(
                black_box("NotFound"),
                Some(black_box("order 1001 not found in shard 7 (user 'jane')")),
                "shop::orders",
                "load",
            )
        })
    });
    g.finish();
}

criterion_group!(redaction, benches);
criterion_main!(redaction);
