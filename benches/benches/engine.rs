//! The engine at scale: a full rolling replacement of 10 000 instances on the simulator, in
//! virtual time. `cargo bench -p immut-bench`.

use criterion::{Criterion, criterion_group, criterion_main};
use immut_bench::{blue_green, rolling, run};

fn engine(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine");
    group.sample_size(10);
    group.bench_function("rolling_10000", |b| b.iter(|| run(rolling(10_000).strategy, 10_000)));
    group.bench_function("blue_green_10000", |b| b.iter(|| run(blue_green().strategy, 10_000)));
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
