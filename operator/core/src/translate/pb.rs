//! Small protobuf values every builder needs: durations, wrapped integers and booleans,
//! percentages, and `Any` packing of typed configs.

use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};

/// A protobuf duration.
pub fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Zero: "no timeout" where Envoy reads 0 so.
pub const NO_TIMEOUT: Duration = Duration {
    seconds: 0,
    nanos: 0,
};

/// Whole seconds as a protobuf duration.
pub const fn seconds(seconds: i64) -> Duration {
    Duration { seconds, nanos: 0 }
}

/// A wrapped u32.
pub fn u32v(value: u32) -> UInt32Value {
    UInt32Value { value }
}

/// A wrapped bool.
pub fn boolv(value: bool) -> BoolValue {
    BoolValue { value }
}

/// `numerator` percent.
pub fn percent(numerator: u32) -> FractionalPercent {
    FractionalPercent {
        numerator,
        denominator: DenominatorType::Hundred as i32,
    }
}

/// Config source that means "over the same ADS stream".
pub fn ads() -> envoy_types::pb::envoy::config::core::v3::ConfigSource {
    use envoy_types::pb::envoy::config::core::v3::{
        config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
    };
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}
