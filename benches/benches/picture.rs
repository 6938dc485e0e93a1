//! Drawing a large plan: 1000 instances in 100 waves (rolling, surge 10), as the SVG picture
//! and as the HTML report. Prints each file's size once, then times the rendering.
//! `cargo bench -p immut-bench --bench picture`.

use criterion::{Criterion, criterion_group, criterion_main};
use immut_bench::{latencies, releases};
use immut_core::sim::SimProvider;
use immut_core::{Count, InstanceId, Rolling};
use immut_report::{html, plan, svg};

fn picture(c: &mut Criterion) {
    const N: usize = 1000;
    let (v1, v2) = releases();
    let sim = SimProvider::builder().build().expect("a simulator");
    let live = sim.seed(&v1, N, true);
    let serving: Vec<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
    let deployer = sim
        .deployer()
        .strategy(Rolling::new().max_surge(Count::Count(10)).max_unavailable(Count::Count(0)))
        .desired(N)
        .build()
        .expect("a deployer");
    let planned = immut_core::dry_run::plan(&deployer, &v2, Some(&v1), live, serving, latencies()).expect("a plan");
    let timeline = plan::timeline(&planned, "web: 1000 instances, rolling, surge 10");
    let picture = svg::render(&timeline).expect("renders");
    let report = html::render(&timeline).expect("renders");
    eprintln!(
        "picture: {} waves, {} capacity points, {} markers; SVG {} bytes, HTML {} bytes",
        timeline.waves.len(),
        timeline.samples.len(),
        timeline.markers.len(),
        picture.len(),
        report.len()
    );
    let mut group = c.benchmark_group("picture");
    group.sample_size(20);
    group.bench_function("svg_1000_instances_100_waves", |b| b.iter(|| svg::render(&timeline).expect("renders")));
    group.bench_function("html_1000_instances_100_waves", |b| b.iter(|| html::render(&timeline).expect("renders")));
    group.finish();
}

criterion_group!(benches, picture);
criterion_main!(benches);
