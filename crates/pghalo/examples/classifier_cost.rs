//! How many statements per second the router's classifier judges, with a
//! warm cache, with none, and on pgbench -S texts whose literals differ
//! each time (the simple protocol's case). Run by bench/classifier; prints
//! one line per case.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pghalo::router::{Classifier, ClassifierConfig, PgQueryClassifier, StaticVolatility};

const CORPUS: &str = include_str!("../src/router/corpus.txt");

fn corpus() -> Vec<String> {
    CORPUS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('|').map(|(_, sql)| sql.trim().to_owned()))
        .collect()
}

fn classifier(cache_entries: usize) -> PgQueryClassifier {
    PgQueryClassifier::new(
        ClassifierConfig {
            cache_entries,
            ..ClassifierConfig::default()
        },
        Arc::new(StaticVolatility::with_builtins()),
    )
}

/// Classifies `texts` round after round for about `budget`; statements
/// per second.
fn rate(c: &PgQueryClassifier, texts: &[String], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < budget {
        for text in texts {
            std::hint::black_box(c.classify(text.as_bytes()));
        }
        done += texts.len() as u64;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(seconds);
    let statements = corpus();

    let warm = classifier(4096);
    rate(&warm, &statements, Duration::from_millis(50));
    let warm_rate = rate(&warm, &statements, budget);
    let cold_rate = rate(&classifier(0), &statements, budget);

    // pgbench -S: one statement, a new literal every time. The cache key
    // masks literals, so after the first parse these are cache hits.
    let pgbench: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919 % 100_000
            )
        })
        .collect();
    let masked = classifier(4096);
    let pgbench_warm = rate(&masked, &pgbench, budget);
    let pgbench_cold = rate(&classifier(0), &pgbench, budget);

    println!("classifier corpus ({} statements):", statements.len());
    println!(
        "  warm cache: {:>10.0} statements/s ({:.2} us each)",
        warm_rate,
        1e6 / warm_rate
    );
    println!(
        "  no cache:   {:>10.0} statements/s ({:.2} us each)",
        cold_rate,
        1e6 / cold_rate
    );
    println!("pgbench -S texts (a new literal each time):");
    println!(
        "  warm cache: {:>10.0} statements/s ({:.2} us each)",
        pgbench_warm,
        1e6 / pgbench_warm
    );
    println!(
        "  no cache:   {:>10.0} statements/s ({:.2} us each)",
        pgbench_cold,
        1e6 / pgbench_cold
    );
    let stats = warm.cache_stats();
    println!("cache after the warm corpus runs: {stats:?}");
}
