//! Leader election on a coordination.k8s.io/v1 Lease, so that one replica writes status.
//!
//! ```text
//! every retry period: read the Lease
//!   missing              -> create it, holding it
//!   held by us           -> renew (PUT with its resourceVersion: a concurrent writer wins)
//!   free, or unchanged
//!   for a lease duration -> take it over (PUT, leaseTransitions + 1)
//!   held by another      -> follow
//! --> watch::Sender<bool> (leading or not), read by the status writer before every write
//! ```
//!
//! Expiry is judged by when *this* replica last saw the Lease change, not by the timestamps
//! in it, so clock skew between nodes cannot make two leaders. A leader that cannot renew
//! for the renew deadline, or that reads another holder, stops leading at once. On shutdown
//! the leader releases the Lease so that another replica takes over without waiting.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the Lease is and how it is timed.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease unrenewed stays with its holder.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long stops leading.
    pub renew_deadline: Duration,
    /// How often the Lease is read and renewed.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            namespace: namespace.into(),
            name: "weir-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Errors of one election round.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API call failed.
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The error.
        source: kube::Error,
    },
}

/// The elector's memory between rounds.
struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease's resourceVersion when we last saw it change, and when that was.
    observed: Option<(String, Instant)>,
    last_renew: Option<Instant>,
}

/// Runs elections until `shutdown` resolves, then releases the Lease if held.
pub async fn run(
    client: Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut elector = Elector {
        api: Api::namespaced(client, &settings.namespace),
        settings,
        observed: None,
        last_renew: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = tokio::time::interval(elector.settings.retry_period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = ticks.tick() => {}
        }
        let now_leading = match elector.round().await {
            Ok(held) => {
                if held {
                    elector.last_renew = Some(Instant::now());
                }
                held
            }
            Err(err) => {
                tracing::warn!(%err, "leader election round failed");
                // Keep leading only while the renew deadline has not passed.
                *leading.borrow()
                    && elector
                        .last_renew
                        .is_some_and(|t| t.elapsed() < elector.settings.renew_deadline)
            }
        };
        leading.send_if_modified(|was| {
            let changed = *was != now_leading;
            if changed {
                tracing::info!(
                    identity = elector.settings.identity,
                    leading = now_leading,
                    "leadership changed"
                );
            }
            *was = now_leading;
            changed
        });
    }
    let was_leading = leading.send_replace(false);
    if was_leading {
        match elector.release().await {
            Ok(()) => tracing::info!("Lease released"),
            Err(err) => tracing::warn!(%err, "could not release the Lease; it expires on its own"),
        }
    }
}

impl Elector {
    fn error(&self, source: kube::Error) -> LeaseError {
        LeaseError::Api {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            source,
        }
    }

    /// The Lease, if it exists.
    async fn read(&self) -> Result<Option<Lease>, LeaseError> {
        self.api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| self.error(e))
    }

    /// One round: whether we hold the Lease afterwards.
    async fn round(&mut self) -> Result<bool, LeaseError> {
        let me = self.settings.identity.clone();
        let Some(mut lease) = self.read().await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.held_spec(LeaseSpec::default(), true)),
            };
            return self
                .write(self.api.create(&PostParams::default(), &lease).await)
                .map(|created| created.is_some());
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(v, _)| v) != Some(&version) {
            self.observed = Some((version, Instant::now()));
        }
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.settings.lease_duration);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, seen)| seen.elapsed() >= duration);
        let take_over = holder != me;
        if take_over && !holder.is_empty() && !expired {
            return Ok(false);
        }
        lease.spec = Some(self.held_spec(spec, take_over));
        let written = self.write(
            self.api
                .replace(&self.settings.name, &PostParams::default(), &lease)
                .await,
        )?;
        let Some(written) = written else {
            return Ok(false);
        };
        // Our own write is not a sign of life from another holder.
        self.observed = written
            .metadata
            .resource_version
            .map(|v| (v, Instant::now()));
        Ok(true)
    }

    /// `Ok(None)` when another replica wrote first (409): not an error, just not ours.
    fn write(&self, result: Result<Lease, kube::Error>) -> Result<Option<Lease>, LeaseError> {
        match result {
            Ok(lease) => Ok(Some(lease)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    fn held_spec(&self, mut spec: LeaseSpec, acquired: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        if acquired {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.map_or(0, |t| t + 1));
        }
        spec.holder_identity = Some(self.settings.identity.clone());
        spec.lease_duration_seconds = Some(self.settings.lease_duration.as_secs().max(1) as i32);
        spec.renew_time = Some(now);
        spec
    }

    /// Gives the Lease up: no holder, so the next replica to look takes it at once.
    async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.read().await? else {
            return Ok(());
        };
        let mut spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| self.error(e))
    }
}
