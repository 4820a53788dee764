//! A `RetryLayer` that records gRPC's OpenTelemetry metrics into an SDK meter provider (values
//! are aggregated at record time; the periodic reader's in-memory exporter runs every 60 s, not
//! during a measurement). Its own file, so that the instruction bench, which must not take
//! `common`'s counting allocator, can include it alone.

use opentelemetry::metrics::MeterProvider;
use tonic_retry::RetryLayer;

pub(crate) fn layer_with_metrics() -> RetryLayer {
    let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
    let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(exporter).build();
    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(reader)
        .build();
    RetryLayer::builder()
        .target("127.0.0.1:50051")
        .opentelemetry(provider.meter("tonic-retry-bench"))
        .build()
        .expect("layer")
}
