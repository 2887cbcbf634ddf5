//! Translation at the scale DESIGN.md targets: 10,000 Services, 50,000 endpoints and 2,000
//! policies (full translation, target < 200 ms on one core), and the work one endpoint change
//! causes (target < 1 ms).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use std::time::Duration;
use weir_core::testing::*;
use weir_core::{Capture, Event, Index, Object, ProxyProfile, SnapshotBuilder};

// The operator binary uses mimalloc; measure with the same allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 5;
const POLICIES: usize = 2_000;

fn mesh_events() -> Vec<Event> {
    let mut events = Vec::new();
    for s in 0..SERVICES {
        let (ns, name) = (format!("ns{}", s % 100), format!("svc{s}"));
        let ip = format!("10.96.{}.{}", s / 250, s % 250);
        events.push(Event::apply(Object::Service(mk_service(
            &ns,
            &name,
            &ip,
            &[8080],
        ))));
        let mut eps = Vec::new();
        for e in 0..ENDPOINTS_PER_SERVICE {
            let pod = format!("{name}-{e}");
            let version = if e == 0 { "v2" } else { "v1" };
            events.push(Event::apply(Object::Pod(mk_pod(
                &ns,
                &pod,
                &[("app", &name), ("version", version)],
            ))));
            eps.push((
                format!(
                    "10.{}.{}.{}",
                    s / 62_500 + 1,
                    (s / 250) % 250,
                    (s % 250) + e
                ),
                pod,
            ));
        }
        let eps: Vec<(&str, &str)> = eps.iter().map(|(a, p)| (a.as_str(), p.as_str())).collect();
        events.push(Event::apply(Object::EndpointSlice(mk_slice(
            &ns,
            &format!("{name}-x"),
            &name,
            "http",
            8080,
            &eps,
        ))));
        if s < POLICIES {
            let spec = mk_policy_spec(&name, &[("v1", 80), ("v2", 20)]);
            events.push(Event::apply(Object::TrafficPolicy(mk_policy(
                &ns, &name, spec,
            ))));
        }
    }
    events
}

fn profiles() -> [ProxyProfile; 2] {
    [
        ProxyProfile::new(Capture::Transparent, weir_api::MtlsMode::Strict),
        ProxyProfile::new(
            Capture::Explicit { port: 15001 },
            weir_api::MtlsMode::Strict,
        ),
    ]
}

fn index_all(events: Vec<Event>) -> Index {
    let mut index = Index::new();
    for e in events {
        index.apply(e);
    }
    index
}

fn translate_all(events: Vec<Event>) -> (Index, SnapshotBuilder) {
    translate_index(index_all(events))
}

/// Translation proper: every dirty Service of a filled index into both profiles' snapshots.
fn translate_index(mut index: Index) -> (Index, SnapshotBuilder) {
    let mut snapshots = SnapshotBuilder::new();
    for p in profiles() {
        snapshots.snapshot(p);
    }
    snapshots.update(&mut index);
    (index, snapshots)
}

fn benches(c: &mut Criterion) {
    let events = mesh_events();
    let mut group = c.benchmark_group("translate");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function(
        "index: 10k services, 50k endpoints, 10k slices, 2k policies applied",
        |b| b.iter_batched(|| events.clone(), index_all, BatchSize::LargeInput),
    );
    group.bench_function(
        "full: 10k services, 50k endpoints, 2k policies, 2 profiles",
        |b| {
            b.iter_batched(
                || index_all(events.clone()),
                translate_index,
                BatchSize::LargeInput,
            )
        },
    );

    let (mut index, mut snapshots) = translate_all(events.clone());
    let mut flip = false;
    group
        .sample_size(100)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(
        "one endpoint change (EndpointSlice update), 2 profiles",
        |b| {
            b.iter_batched(
                || {
                    flip = !flip;
                    let ip = if flip { "10.250.0.1" } else { "10.250.0.2" };
                    Event::apply(Object::EndpointSlice(mk_slice(
                        "ns7",
                        "svc7-x",
                        "svc7",
                        "http",
                        8080,
                        &[(ip, "svc7-0"), ("10.1.0.8", "svc7-1")],
                    )))
                },
                |event| {
                    index.apply(event);
                    let (changes, published) = snapshots.update(&mut index);
                    assert_eq!(published.len(), 2);
                    assert!(!changes.ports_changed && changes.clusters.is_empty());
                },
                BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(translate, benches);
criterion_main!(translate);
