//! The pictures and the report: structure (parsed as XML), values read back from the picture,
//! a snapshot, escaping, self-containment, recorded runs (rolled back, interrupted and read on
//! another machine's copy of the state) and one render by headless Chromium.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use immut_core::dry_run::{MarkKind, Plan};
use immut_core::journal::{FileJournal, Journal, JournalEntry, JournalRecord, LaunchIntent, MemoryJournal, Observed};
use immut_core::semver::Version;
use immut_core::sim::{Faults, Latencies, SimProvider};
use immut_core::{
    ArtifactSpec, BaselineSpec, BlueGreen, Count, Decision, DeploymentId, InstanceId, LaunchSpec, LaunchToken, Release,
    Rolling,
};
use immut_report::{Marker, MarkerKind, Timeline, html, plan, recorded, svg};

fn release(major: u64) -> Release {
    Release::new(
        "web",
        &ArtifactSpec::new("web", Version::new(major, 0, 0), format!("img-{major}")),
        &BaselineSpec::new("base", Version::new(1, 0, 0), LaunchSpec::default()),
    )
    .unwrap()
}

fn latencies() -> Latencies {
    Latencies {
        api: Duration::from_millis(100),
        launch_to_running: Duration::from_secs(30),
        boot_to_healthy: Duration::from_secs(20),
        drain: Duration::from_secs(10),
        ..Latencies::default()
    }
}

/// A dry-run of `desired` instances of v2 over v1 with `strategy`.
fn a_plan(desired: usize, strategy: impl immut_core::ReplacementStrategy + 'static) -> Plan {
    let sim = SimProvider::builder().seed(7).build().unwrap();
    let live = sim.seed(&release(1), desired, true);
    let serving: Vec<InstanceId> = live.iter().map(|i| i.id.clone()).collect();
    let deployer = sim.deployer().strategy(strategy).desired(desired).build().unwrap();
    immut_core::dry_run::plan(&deployer, &release(2), Some(&release(1)), live, serving, latencies()).unwrap()
}

fn rolling_plan() -> Plan {
    a_plan(6, Rolling::new().max_surge(Count::Count(2)).max_unavailable(Count::Count(1)))
}

fn blue_green_plan() -> Plan {
    a_plan(4, BlueGreen::new().bake(Duration::from_secs(30)))
}

fn doc(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("the SVG does not parse as XML: {e}\n{svg}"))
}

fn by_id<'a>(doc: &'a roxmltree::Document<'a>, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants().find(|n| n.attribute("id") == Some(id)).unwrap_or_else(|| panic!("no element with id {id}"))
}

fn with_class<'a>(doc: &'a roxmltree::Document<'a>, class: &str) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants().filter(|n| n.attribute("class").is_some_and(|c| c.split(' ').any(|w| w == class))).collect()
}

fn with_class_marker(node: &roxmltree::Node<'_, '_>) -> bool {
    node.attribute("class").is_some_and(|c| c.split(' ').any(|w| w == "marker"))
        && node.attribute("id").is_some_and(|id| id.starts_with("marker-"))
}

fn points(node: roxmltree::Node<'_, '_>) -> Vec<(f64, f64)> {
    node.attribute("points")
        .expect("a polyline has points")
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

/// The instance count a pixel row stands for, from the mapping the picture carries.
fn value_at(doc: &roxmltree::Document<'_>, y: f64) -> f64 {
    let layers = by_id(doc, "immut-layers");
    let origin: f64 = layers.attribute("data-origin-y").unwrap().parse().unwrap();
    let scale: f64 = layers.attribute("data-px-per-instance").unwrap().parse().unwrap();
    (origin - y) / scale
}

/// The values the serving-healthy line is drawn at, read back from the picture.
fn serving_values(doc: &roxmltree::Document<'_>) -> Vec<usize> {
    let mut values: Vec<usize> = Vec::new();
    for (_, y) in points(by_id(doc, "serving-healthy")) {
        let v = value_at(doc, y);
        assert!((v - v.round()).abs() < 0.01, "a plotted point at y={y} maps to {v}, not a whole count");
        if values.last() != Some(&(v.round() as usize)) {
            values.push(v.round() as usize);
        }
    }
    values
}

fn dedup(values: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for v in values {
        if out.last() != Some(&v) {
            out.push(v);
        }
    }
    out
}

#[test]
fn a_plan_picture_has_a_band_per_wave_the_limits_and_a_marker_per_switch() {
    for plan_ in [rolling_plan(), blue_green_plan()] {
        let picture = svg::render(&plan::timeline(&plan_, "web")).unwrap();
        let doc = doc(&picture);
        let bands: Vec<_> = with_class(&doc, "wave-band")
            .into_iter()
            .filter(|n| n.tag_name().name() == "rect" && n.attribute("id").is_some())
            .collect();
        let waves: Vec<_> = plan_.waves.iter().filter(|w| w.wave > 0).collect();
        assert_eq!(bands.len(), waves.len(), "one band per launch wave");
        for w in waves {
            assert_eq!(by_id(&doc, &format!("wave-{}", w.wave)).attribute("data-wave"), Some(&*w.wave.to_string()));
        }
        assert_eq!(by_id(&doc, "floor").tag_name().name(), "polyline");
        assert_eq!(by_id(&doc, "ceiling").tag_name().name(), "polyline");
        let switches = plan_.marks.iter().filter(|m| m.kind == MarkKind::Switch).count();
        let markers = with_class(&doc, "switch").into_iter().filter(|n| with_class_marker(n)).count();
        assert_eq!(markers, switches, "one marker per switch");
        for marker in with_class(&doc, "marker") {
            let title = marker.children().find(|c| c.tag_name().name() == "title").expect("every marker has a title");
            assert!(!title.text().unwrap_or_default().is_empty());
        }
    }
    let bg = blue_green_plan();
    assert!(bg.marks.iter().any(|m| m.kind == MarkKind::Switch), "blue/green switches: {:?}", bg.marks);
    assert!(rolling_plan().waves.len() >= 3, "the rolling plan has several waves");
}

#[test]
fn every_plotted_serving_point_maps_back_to_its_value_and_a_safe_plan_stays_above_the_floor() {
    let plan_ = rolling_plan();
    assert!(plan_.capacity.iter().all(|c| c.serving_healthy >= plan_.floor), "the plan keeps to its floor");
    let picture = svg::render(&plan::timeline(&plan_, "web")).unwrap();
    let doc = doc(&picture);
    assert_eq!(serving_values(&doc), dedup(plan_.capacity.iter().map(|c| c.serving_healthy)));
    let floor_y = points(by_id(&doc, "floor"))[0].1;
    assert!((value_at(&doc, floor_y) - plan_.floor as f64).abs() < 0.01);
    for (x, y) in points(by_id(&doc, "serving-healthy")) {
        assert!(y <= floor_y + 0.01, "a serving point at x={x} is drawn below the floor line ({y} > {floor_y})");
    }
    let total: Vec<usize> = points(by_id(&doc, "total")).iter().map(|p| value_at(&doc, p.1).round() as usize).collect();
    assert_eq!(dedup(total), dedup(plan_.capacity.iter().map(|c| c.total)));
}

fn record(at_ms: u64, entry: JournalEntry) -> JournalRecord {
    JournalRecord { deployment: DeploymentId::new("d-dip"), at_ms, entry }
}

fn observed(step: u64, serving_healthy: usize, total: usize, floor: usize, ceiling: usize) -> JournalEntry {
    JournalEntry::Observed(Observed {
        step,
        serving_healthy,
        serving: serving_healthy,
        total,
        floor,
        ceiling,
        rolling_back: false,
    })
}

/// A recorded deployment whose capacity dipped below the floor (an out-of-band kill), then
/// rolled back.
fn dip_records() -> Vec<JournalRecord> {
    let begin = JournalEntry::Begin {
        release: Box::new(release(2)),
        previous_release: None,
        previous: Some(release(1).id().clone()),
        previous_count: 4,
        initial_total: 4,
        desired: 4,
        strategy: "rolling".into(),
        replacing: vec![],
        accept_no_way_back: false,
    };
    let token = LaunchToken::new("d-dip-w1");
    vec![
        record(1_000, begin),
        record(1_010, observed(1, 4, 4, 3, 5)),
        record(
            1_020,
            JournalEntry::Intent {
                step: 1,
                decision: Decision::Launch { count: 1 },
                launch: Some(LaunchIntent { wave: 1, token: token.clone(), count: 1, rollback: false }),
            },
        ),
        record(1_030, JournalEntry::Applied { step: 1, token: Some(token), ids: vec![InstanceId::new("i-5")] }),
        record(9_000, observed(5, 4, 5, 3, 5)),
        record(12_000, observed(7, 1, 2, 3, 5)),
        record(12_010, JournalEntry::RollingBack { reason: "serving-healthy 1 < floor 3 <script>".into() }),
        record(20_000, observed(9, 4, 4, 3, 5)),
    ]
}

#[test]
fn a_capacity_dip_below_the_floor_shows_in_the_picture() {
    let timeline = recorded::timeline(&dip_records(), None, None).unwrap();
    let picture = svg::render(&timeline).unwrap();
    let doc = doc(&picture);
    assert_eq!(serving_values(&doc), vec![4, 1, 4]);
    let floor_y = points(by_id(&doc, "floor"))[0].1;
    let below: Vec<f64> = points(by_id(&doc, "serving-healthy")).iter().map(|p| p.1).filter(|y| *y > floor_y).collect();
    assert!(!below.is_empty(), "the dip is drawn below the floor line");
    assert!(below.iter().all(|y| (value_at(&doc, *y) - 1.0).abs() < 0.01));
    assert_eq!(with_class(&doc, "rollback").iter().filter(|n| n.attribute("id").is_some()).count(), 1);
    assert_eq!(
        with_class(&doc, "interrupted").iter().filter(|n| n.attribute("id").is_some()).count(),
        1,
        "no end record: the picture shows where the record stops"
    );
}

#[test]
fn a_small_plan_matches_its_snapshot() {
    let plan_ = a_plan(3, Rolling::new().max_surge(Count::Count(1)));
    let picture = svg::render(&plan::timeline(&plan_, "web: 3 instances, rolling, surge 1")).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/plan_small.svg");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &picture).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_SNAPSHOTS=1 to write it", path.display()));
    assert!(
        picture == expected,
        "the picture changed from {}; review it and run with UPDATE_SNAPSHOTS=1",
        path.display()
    );
}

fn escaped_timeline() -> Timeline {
    let mut t = recorded::timeline(&dip_records(), None, None).unwrap();
    t.title = "web <script>alert('x')</script> & \"friends\"".into();
    t.markers.push(Marker {
        at_ms: 15_000,
        kind: MarkerKind::Measurement { passed: false },
        label: "p99 > 250ms <b>".into(),
    });
    t.summary.push(("note <i>".into(), "a & b < c".into()));
    t
}

#[test]
fn text_is_escaped_in_the_picture_and_the_report() {
    let t = escaped_timeline();
    let picture = svg::render(&t).unwrap();
    let doc = doc(&picture);
    assert!(doc.descendants().all(|n| !["script", "b", "i"].contains(&n.tag_name().name())));
    assert!(picture.contains("&lt;script&gt;"));
    assert_eq!(with_class(&doc, "measurement-failed").iter().filter(|n| n.attribute("id").is_some()).count(), 1);
    let report = html::render(&t).unwrap();
    assert!(!report.contains("<script"), "no raw script tag");
    assert!(!report.contains("<b>") && !report.contains("<i>"));
    assert!(report.contains("a &amp; b &lt; c"));
    assert!(report.contains("serving-healthy 1 &lt; floor 3 &lt;script&gt;"));
}

/// No attribute or style in the report points outside the file.
fn assert_self_contained(report: &str) {
    let lower = report.to_ascii_lowercase();
    for needle in ["src=", "href=", "url(", "@import", "<link", "<script", "<img", "<iframe"] {
        assert!(!lower.contains(needle), "the report contains {needle:?}");
    }
    // The picture inside is XML and names only its namespace.
    let start = report.find("<svg").unwrap();
    let end = report.rfind("</svg>").unwrap() + "</svg>".len();
    let doc = doc(&report[start..end]);
    for node in doc.descendants() {
        for attr in node.attributes() {
            assert!(!attr.value().contains("://") || attr.name() == "xmlns", "{} = {}", attr.name(), attr.value());
        }
    }
}

#[test]
fn the_report_is_self_contained() {
    assert_self_contained(&html::render(&plan::timeline(&rolling_plan(), "web")).unwrap());
    assert_self_contained(&html::render(&escaped_timeline()).unwrap());
}

/// A deployment whose new instances never turn healthy, on the simulator with a journal.
async fn rolled_back(journal: Arc<dyn Journal>) -> immut_core::Outcome {
    let (v1, v2) = (release(1), release(2));
    let faults = Faults { never_healthy_releases: vec![v2.id().clone()], ..Faults::default() };
    let sim = SimProvider::builder().latencies(latencies()).faults(faults).build().unwrap();
    sim.seed(&v1, 3, true);
    let deployer = sim
        .deployer()
        .strategy(BlueGreen::new())
        .desired(3)
        .progress_deadline(Duration::from_secs(120))
        .journal_arc(journal)
        .build()
        .unwrap();
    deployer.deploy(v2).with_previous(v1).run().await
}

#[tokio::test(start_paused = true)]
async fn the_report_of_a_rolled_back_deployment_shows_the_rollback() {
    let journal = MemoryJournal::new();
    let outcome = rolled_back(Arc::new(journal.clone())).await;
    assert!(matches!(outcome.phase, immut_core::Phase::RolledBack { .. }), "{outcome:?}");
    let records = journal.read("web").unwrap().records;
    let observations: Vec<&Observed> = records
        .iter()
        .filter_map(|r| match &r.entry {
            JournalEntry::Observed(o) => Some(o),
            _ => None,
        })
        .collect();
    assert!(observations.len() >= 3, "the engine journals what it observes: {observations:?}");
    for pair in observations.windows(2) {
        let same = Observed { step: 0, ..*pair[0] } == Observed { step: 0, ..*pair[1] };
        assert!(!same, "an observation is journaled only when something changed: {pair:?}");
    }
    assert!(observations.iter().any(|o| o.rolling_back), "the rollback's observations are journaled too");
    let timeline = recorded::timeline(&records, Some(&outcome.deployment), None).unwrap();
    let report = html::render(&timeline).unwrap();
    let start = report.find("<svg").unwrap();
    let end = report.rfind("</svg>").unwrap() + 6;
    let doc = doc(&report[start..end]);
    let rollbacks: Vec<_> = with_class(&doc, "rollback").into_iter().filter(|n| n.attribute("id").is_some()).collect();
    assert_eq!(rollbacks.len(), 1, "one rollback marker");
    assert!(report.contains("rolled back"), "the summary says how it ended");
    assert!(report.contains("<td>rollback</td>"), "the events table has the rollback");
    assert_self_contained(&report);
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("immut-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

// Real time: the file journal's blocking writes would let a paused clock run past deadlines.
#[tokio::test]
async fn an_interrupted_deployment_is_drawn_from_a_copy_of_the_state() {
    let dir = temp_dir("interrupted");
    let (v1, v2) = (release(1), release(2));
    let sim = SimProvider::builder().build().unwrap();
    sim.seed(&v1, 4, true);
    let journal = FileJournal::open(dir.join("first")).unwrap();
    let deployer =
        sim.deployer().strategy(Rolling::new().max_surge(Count::Count(1))).desired(4).journal(journal).build().unwrap();
    let mut deployment = deployer.deploy(v2).with_previous(v1);
    let mut launches = 0;
    while launches < 2 {
        if let Some(outcome) = deployment.step().await {
            panic!("it ends only after four waves: {outcome:?}");
        }
        launches += deployment.take_events().iter().filter(|e| matches!(e, immut_core::Event::Launched { .. })).count();
    }
    let id = deployment.id().clone();
    drop(deployment);
    // Another machine: its own copy of the state, read by a journal that never wrote it.
    copy_dir(&dir.join("first"), &dir.join("second"));
    let other = FileJournal::open(dir.join("second")).unwrap();
    let timeline = recorded::timeline(&other.read("web").unwrap().records, None, None).unwrap();
    assert!(timeline.summary.iter().any(|(k, v)| k == "deployment" && *v == id.to_string()));
    assert!(timeline.summary.iter().any(|(k, v)| k == "outcome" && v.starts_with("interrupted")));
    let picture = svg::render(&timeline).unwrap();
    let doc = doc(&picture);
    let stop =
        with_class(&doc, "interrupted").into_iter().find(|n| n.attribute("id").is_some()).expect("a stop marker");
    assert_eq!(stop.attribute("data-at-ms").unwrap().parse::<u64>().unwrap(), timeline.end_ms);
    let bands = with_class(&doc, "wave-band").into_iter().filter(|n| n.attribute("id").is_some()).count();
    assert_eq!(bands, 2, "the two waves launched before it stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's headless Chromium, or the one `IMMUT_CHROMIUM` names.
fn chromium() -> PathBuf {
    let path = std::env::var_os("IMMUT_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: the report's render test needs headless Chromium (`apt-get install -y chromium`, or set IMMUT_CHROMIUM)",
        path.display()
    );
    path
}

#[test]
fn chromium_renders_the_report_to_a_picture_that_is_not_blank() {
    let chromium = chromium();
    let dir = temp_dir("chromium");
    let page = dir.join("report.html");
    std::fs::write(&page, html::render(&plan::timeline(&rolling_plan(), "web: rolling")).unwrap()).unwrap();
    let png = dir.join("report.png");
    let mut child = std::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1200,1000",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("chromium.log")).unwrap())
        .spawn()
        .unwrap();
    // A browser that hangs is stopped by its pid, and the test fails saying so.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish the screenshot within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output_log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
    assert!(png.exists(), "chromium wrote no screenshot: {output_log}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0usize;
    for px in pixels.chunks(channels) {
        colours.insert(px[..3.min(channels)].to_vec());
        if px[..3.min(channels)].iter().any(|c| *c < 200) {
            inked += 1;
        }
    }
    let total = pixels.len() / channels;
    assert!(colours.len() > 20, "the screenshot has only {} colours: blank", colours.len());
    assert!(inked * 200 > total, "only {inked} of {total} pixels are drawn on: blank");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn a_dip_below_the_floor_in_a_simulated_run_is_journaled_and_drawn() {
    let (v1, v2) = (release(1), release(2));
    // Two serving instances vanish out of band while the new release boots: below the floor.
    let kill = immut_core::sim::OutOfBand { at: Duration::from_secs(10), count: 2 };
    let faults = Faults { out_of_band: vec![kill], ..Faults::default() };
    let sim = SimProvider::builder().latencies(latencies()).faults(faults).build().unwrap();
    sim.seed(&v1, 4, true);
    let journal = MemoryJournal::new();
    let deployer =
        sim.deployer().strategy(BlueGreen::new()).desired(4).journal_arc(Arc::new(journal.clone())).build().unwrap();
    let outcome = deployer.deploy(v2).with_previous(v1).run().await;
    let records = journal.read("web").unwrap().records;
    let dip = records.iter().find_map(|r| match &r.entry {
        JournalEntry::Observed(o) if o.serving_healthy < o.floor => Some(*o),
        _ => None,
    });
    let dip = dip.unwrap_or_else(|| panic!("the dip is journaled ({outcome:?}): {records:#?}"));
    let timeline = recorded::timeline(&records, None, None).unwrap();
    let picture = svg::render(&timeline).unwrap();
    let doc = doc(&picture);
    assert!(
        serving_values(&doc).contains(&dip.serving_healthy),
        "the picture shows the dip to {}",
        dip.serving_healthy
    );
}
