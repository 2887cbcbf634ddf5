//! Workload certificate issuance on one core, next to the same machine's raw ECDSA P-256
//! signing rate measured in the same run (goal: at least 5,000 certificates/s/core).
//!
//! An issuance is a fresh P-256 key, one signature by the CA, and the PEM the SDS secret
//! carries; the raw rate is one P-256 signature over a certificate-sized message.

use std::time::{Duration, Instant, SystemTime};
use weir_core::identity::{secrets, CertificateAuthority, SpiffeId};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUN: Duration = Duration::from_secs(3);

/// Calls `f` for `RUN` on this thread; returns calls per second.
fn rate(mut f: impl FnMut(u64)) -> f64 {
    for i in 0..100 {
        f(i); // warm up
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..50 {
            f(n);
            n += 1;
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    use rcgen::SigningKey;
    let now = SystemTime::now();
    let ca = CertificateAuthority::generate("cluster.local", now).expect("CA");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let message = vec![0x5a_u8; 400]; // about a workload certificate's TBS
    let raw = rate(|_| {
        std::hint::black_box(key.sign(&message).expect("sign"));
    });
    let issued = rate(|i| {
        let id = SpiffeId::new(
            "cluster.local",
            &format!("ns{}", i % 100),
            &format!("sa{i}"),
        );
        let cert = ca
            .issue_workload(&id, Duration::from_secs(24 * 3600), now)
            .expect("issue");
        std::hint::black_box(secrets::workload(&cert));
    });
    println!("identity (one core, {} s each):", RUN.as_secs());
    println!("  raw ECDSA P-256 signatures      {raw:>9.0} /s");
    println!("  workload certificates issued    {issued:>9.0} /s  (key + signature + SDS secret; goal >= 5000)");
    println!("  issuance / raw signing           {:>8.2}", issued / raw);
}
