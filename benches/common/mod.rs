//! Shared by the benchmarks: the counting allocator's readings, the run mode, the timing
//! recorder that criterion's `iter_custom` feeds, and the closing table.

use std::alloc::System;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[cfg(feature = "opentelemetry")]
pub(crate) mod metrics_layer;

/// Every allocation of the bench process goes through this counter (all threads).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations so far (calls to `alloc`/`alloc_zeroed`; `realloc` is counted apart).
pub(crate) fn allocations() -> u64 {
    GLOBAL.stats().allocations as u64
}

/// Bytes live now: requested minus freed, over the whole process.
pub(crate) fn live_bytes() -> i64 {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// How much to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `cargo test --benches`: run every scenario once, tiny, to prove it works.
    Smoke,
    /// `cargo bench --bench overhead -- --quick` (or `TONIC_RETRY_BENCH_QUICK=1`): short
    /// criterion settings, the whole run in a few minutes.
    Quick,
    /// `cargo bench --bench overhead`: criterion's default settings.
    Full,
}

impl Mode {
    pub(crate) fn from_env() -> Mode {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("TONIC_RETRY_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if !args.iter().any(|a| a == "--bench") {
            Mode::Smoke
        } else if quick {
            Mode::Quick
        } else {
            Mode::Full
        }
    }

    /// Scales an iteration count: full as given, quick a quarter, smoke a tiny fraction.
    pub(crate) fn scale(self, full: u64) -> u64 {
        match self {
            Mode::Full => full,
            Mode::Quick => (full / 4).max(1),
            Mode::Smoke => (full / 100).max(1),
        }
    }

    pub(crate) fn criterion(self) -> criterion::Criterion {
        let c = criterion::Criterion::default().without_plots();
        match self {
            Mode::Quick => c
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_millis(1500))
                .sample_size(20),
            Mode::Full | Mode::Smoke => c,
        }
    }

    /// The number of samples criterion takes per benchmark (its measurement phase).
    pub(crate) fn sample_size(self) -> usize {
        match self {
            Mode::Quick => 20,
            Mode::Full | Mode::Smoke => 100,
        }
    }
}

/// Per-iteration times of each benchmark, one entry per criterion sample, in call order.
static SAMPLES: Mutex<Option<HashMap<String, Vec<f64>>>> = Mutex::new(None);

/// Records one `iter_custom` sample of `id`: `iters` iterations took `elapsed`.
pub(crate) fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    let per_iter = elapsed.as_nanos() as f64 / iters.max(1) as f64;
    let mut samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    samples
        .get_or_insert_with(HashMap::new)
        .entry(id.to_owned())
        .or_default()
        .push(per_iter);
    elapsed
}

/// The median time per iteration of `id`, in ns, over criterion's measurement samples (the last
/// `last` samples; the warm-up's come before them).
pub(crate) fn median_ns(id: &str, last: usize) -> f64 {
    let samples = SAMPLES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(all) = samples.as_ref().and_then(|m| m.get(id)) else {
        return f64::NAN;
    };
    let mut v: Vec<f64> = all[all.len().saturating_sub(last)..].to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One comparison of the closing table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) baseline: String,
    pub(crate) candidate: String,
    pub(crate) ratio: String,
    pub(crate) target: String,
    /// `None`: not measured (a gap, said in `candidate`).
    pub(crate) met: Option<bool>,
}

/// Prints the table as Markdown.
pub(crate) fn print_table(rows: &[Row]) {
    println!();
    println!("| comparison | baseline | candidate | ratio | target | met? |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row.name, row.baseline, row.candidate, row.ratio, row.target, met
        );
    }
    println!();
}

/// `1.234` style ratio.
pub(crate) fn ratio(candidate: f64, baseline: f64) -> String {
    format!("{:.3}", candidate / baseline)
}

/// A duration in ns as a short human string.
pub(crate) fn fmt_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

/// Bytes as MiB.
pub(crate) fn fmt_mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1024.0 * 1024.0))
}
