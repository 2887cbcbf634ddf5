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

/// A wrapped u64.
pub fn u64v(value: u64) -> envoy_types::pb::google::protobuf::UInt64Value {
    envoy_types::pb::google::protobuf::UInt64Value { value }
}

/// Encodings with sorted maps. Envoy's types keep protobuf maps in `HashMap`s, whose
/// order changes from one map to the next; a resource must encode the same way every time
/// (its version is a hash of its bytes). These mirror the few map-bearing messages Weir
/// writes, field for field, with `BTreeMap`s.
pub mod sorted {
    use envoy_types::pb::google::protobuf::{Any, Value};
    use prost::Message;
    use std::collections::BTreeMap;

    /// `google.protobuf.Struct`.
    #[derive(Clone, PartialEq, Message)]
    pub struct Struct {
        /// Fields by name.
        #[prost(btree_map = "string, message", tag = "1")]
        pub fields: BTreeMap<String, Value>,
    }

    impl Struct {
        /// A struct of string fields.
        pub fn strings<'a>(fields: impl IntoIterator<Item = (&'a str, String)>) -> Struct {
            Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| {
                        let value = Value {
                            kind: Some(
                                envoy_types::pb::google::protobuf::value::Kind::StringValue(v),
                            ),
                        };
                        (k.to_string(), value)
                    })
                    .collect(),
            }
        }
    }

    /// `envoy.config.core.v3.Metadata` (filter metadata only).
    #[derive(Clone, PartialEq, Message)]
    pub struct Metadata {
        /// Per filter namespace.
        #[prost(btree_map = "string, message", tag = "1")]
        pub filter_metadata: BTreeMap<String, Struct>,
    }

    /// `envoy.config.core.v3.SubstitutionFormatString` with a JSON format.
    #[derive(Clone, PartialEq, Message)]
    struct JsonFormat {
        #[prost(message, optional, tag = "2")]
        json_format: Option<Struct>,
    }

    /// `envoy.extensions.access_loggers.file.v3.FileAccessLog` with a JSON log format.
    #[derive(Clone, PartialEq, Message)]
    struct JsonFileAccessLog {
        #[prost(string, tag = "1")]
        path: String,
        #[prost(message, optional, tag = "5")]
        log_format: Option<JsonFormat>,
    }

    /// A file access log writing one JSON object per entry to `path`.
    pub fn json_file_access_log(path: &str, fields: Struct) -> Any {
        use prost::Name;
        let log = JsonFileAccessLog {
            path: path.to_string(),
            log_format: Some(JsonFormat {
                json_format: Some(fields),
            }),
        };
        Any {
            type_url: envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog::type_url(),
            value: log.encode_to_vec(),
        }
    }

    /// `message` encoded with `metadata` as its field `tag` (appended: protobuf takes
    /// fields in any order).
    pub fn with_metadata(message: &impl Message, tag: u32, metadata: &Metadata) -> Vec<u8> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let mut buf = message.encode_to_vec();
        let md = metadata.encode_to_vec();
        encode_key(tag, WireType::LengthDelimited, &mut buf);
        encode_varint(md.len() as u64, &mut buf);
        buf.extend_from_slice(&md);
        buf
    }
}
