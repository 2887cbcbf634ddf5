//! The vocabulary every status condition is written in: condition types, reasons typed per
//! condition type ([`AcceptedReason`], [`ResolvedRefsReason`], [`ProgrammedReason`],
//! [`CaReadyReason`]) and [`ConditionView`]. A leaf: it imports nothing of the crate, so
//! parsers (which reject with an Accepted reason) and status builders both use it.
//!
//! A condition is built from a typed reason, so a rejection cannot carry a Programmed
//! reason; [`Reason`] is every reason as written in status.

use serde::{Serialize, Serializer};

/// The condition types, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The latest spec is valid and governs its target.
    Accepted,
    /// The target and every destination exist.
    ResolvedRefs,
    /// The connected proxies ACKed the route tables that carry the policy.
    Programmed,
    /// MeshStatus: the mesh CA issues, and is not about to expire.
    CaReady,
}

impl ConditionType {
    /// The type as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
            ConditionType::Programmed => "Programmed",
            ConditionType::CaReady => "CAReady",
        }
    }
}

/// A reason of one condition type.
pub trait ConditionReason: Copy + Into<Reason> {
    /// The condition type it belongs to.
    const TYPE: ConditionType;
}

/// Declares the reasons of each condition type: one enum per type, and [`Reason`], every
/// reason as written in status.
macro_rules! reasons {
    ($( $(#[$tdoc:meta])* $typed:ident for $cond:ident {
        $( $(#[$doc:meta])* $variant:ident = $text:literal, )*
    } )*) => {
        $(
            $(#[$tdoc])*
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
            pub enum $typed {
                $( $(#[$doc])* $variant, )*
            }

            impl From<$typed> for Reason {
                fn from(reason: $typed) -> Reason {
                    match reason {
                        $( $typed::$variant => Reason::$variant, )*
                    }
                }
            }

            impl ConditionReason for $typed {
                const TYPE: ConditionType = ConditionType::$cond;
            }

            impl $typed {
                /// The reason as written in status.
                pub fn as_str(self) -> &'static str {
                    Reason::from(self).as_str()
                }
            }

            impl std::fmt::Display for $typed {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str(self.as_str())
                }
            }
        )*

        /// Every reason a condition can carry, as written in status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $( $(#[$doc])* $variant, )* )*
        }

        impl Reason {
            /// The reason as written in status (CamelCase, stable).
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $( Reason::$variant => $text, )* )*
                }
            }

            /// The condition type the reason belongs to.
            pub fn condition_type(self) -> ConditionType {
                match self {
                    $( $( Reason::$variant => ConditionType::$cond, )* )*
                }
            }
        }
    };
}

reasons! {
    /// Reasons of `Accepted`.
    AcceptedReason for Accepted {
        /// The spec is valid and fully supported.
        Accepted = "Accepted",
        /// The spec is valid; some fields are not translated yet and are ignored.
        UnsupportedField = "UnsupportedField",
        /// False: a regular expression does not compile.
        InvalidRegex = "InvalidRegex",
        /// False: destination weights do not add up to 100.
        InvalidWeights = "InvalidWeights",
        /// False: a destination names a subset the policy does not define.
        UnknownSubset = "UnknownSubset",
        /// False: a duration is malformed.
        InvalidDuration = "InvalidDuration",
        /// False: any other invalid value.
        InvalidField = "InvalidField",
        /// False: another attachment on the same Service port takes precedence.
        Conflicted = "Conflicted",
    }
    /// Reasons of `ResolvedRefs`.
    ResolvedRefsReason for ResolvedRefs {
        /// Every reference resolved.
        ResolvedRefs = "ResolvedRefs",
        /// False: the target Service (or its port) does not exist.
        TargetNotFound = "TargetNotFound",
        /// False: a destination Service (or its port) does not exist.
        BackendNotFound = "BackendNotFound",
    }
    /// Reasons of `Programmed`.
    ProgrammedReason for Programmed {
        /// Every connected proxy ACKed.
        Programmed = "Programmed",
        /// False: the policy is in no route table.
        NotProgrammed = "NotProgrammed",
        /// False: the previous valid version is programmed, the latest is rejected.
        Invalid = "Invalid",
        /// False: no proxy is connected.
        NoProxies = "NoProxies",
        /// False: some proxies have not ACKed yet.
        Pending = "Pending",
    }
    /// Reasons of MeshStatus's `CAReady`.
    CaReadyReason for CaReady {
        /// The CA issues and expires in more than the warning period.
        Issuing = "Issuing",
        /// False: the CA's Secret does not exist (yet).
        CaNotFound = "CANotFound",
        /// False: the CA's Secret does not hold a usable CA.
        InvalidCa = "InvalidCA",
        /// False: the CA expires within the warning period.
        CaExpiringSoon = "CAExpiringSoon",
        /// False: the CA has expired.
        CaExpired = "CAExpired",
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for ConditionType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A status condition, independent of the Kubernetes type (the controller converts it).
/// Built with [`ConditionView::new`] from a typed reason, so the type always fits the
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConditionView {
    /// The condition type.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// True or False.
    pub status: bool,
    /// Why.
    pub reason: Reason,
    /// What happened and, when it is a problem, how to fix it.
    pub message: String,
}

impl ConditionView {
    /// A condition of the type `reason` belongs to.
    pub fn new<R: ConditionReason>(status: bool, reason: R, message: impl Into<String>) -> Self {
        ConditionView {
            type_: R::TYPE,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_belongs_to_the_type_it_is_built_for() {
        let c = ConditionView::new(false, ProgrammedReason::Pending, "x");
        assert_eq!(c.type_, ConditionType::Programmed);
        assert_eq!(c.reason.condition_type(), ConditionType::Programmed);
        assert_eq!(Reason::from(CaReadyReason::InvalidCa).as_str(), "InvalidCA");
        assert_eq!(
            Reason::from(AcceptedReason::Conflicted).condition_type(),
            ConditionType::Accepted
        );
    }
}
