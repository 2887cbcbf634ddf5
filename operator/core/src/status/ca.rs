//! MeshStatus's `CAReady`: from the CA source's problem, else from the expiry of the CA in
//! force.

use crate::conditions::{CaReadyReason, ConditionView};

/// A CA that expires within this long is reported (CAReady=False, a Warning Event).
pub const CA_EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Why the CA source gives no usable CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaProblem {
    /// [`CaReadyReason::CaNotFound`] or [`CaReadyReason::InvalidCa`].
    pub reason: CaReadyReason,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// MeshStatus's CAReady condition: from the source's problem if any, else from the expiry
/// of the CA in force (`expiry` is `None` until there is one).
pub fn ca_condition(
    problem: Option<&CaProblem>,
    expiry: Option<std::time::SystemTime>,
    now: std::time::SystemTime,
) -> ConditionView {
    let ready = |status, reason: CaReadyReason, message: String| {
        ConditionView::new(status, reason, message)
    };
    if let Some(problem) = problem {
        return ready(false, problem.reason, problem.message.clone());
    }
    let Some(expiry) = expiry else {
        return ready(
            false,
            CaReadyReason::CaNotFound,
            "no mesh CA yet: the leader creates the Secret weir-system/weir-ca (type Generated), or give the Secret named in MeshIdentity mesh spec.ca.secretRef (type Provided)".into(),
        );
    };
    let at = crate::identity::rfc3339(expiry);
    match expiry.duration_since(now) {
        Err(_) => ready(
            false,
            CaReadyReason::CaExpired,
            format!("the mesh CA expired at {at}: no peer accepts its certificates; replace the CA (see the README, Identity and mTLS)"),
        ),
        Ok(left) if left < CA_EXPIRY_WARNING => ready(
            false,
            CaReadyReason::CaExpiringSoon,
            format!(
                "the mesh CA expires at {at} (in {} days): rotate it before then (see the README, Identity and mTLS)",
                left.as_secs() / 86_400
            ),
        ),
        Ok(_) => ready(
            true,
            CaReadyReason::Issuing,
            format!("workload certificates are issued; the CA is valid until {at}"),
        ),
    }
}
