//! Generated protobuf and gRPC code (proto glue), and the codec every generated service and
//! client uses ([`codec::StrictCodec`]).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

/// The `ErrorInfo.domain` of every oprun error.
pub const ERROR_DOMAIN: &str = "oprun.dev";

/// `google.*` packages.
pub mod google {
    /// `google.rpc`.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
    /// `google.api`.
    pub mod api {
        tonic::include_proto!("google.api");
    }
    /// `google.longrunning`.
    pub mod longrunning {
        tonic::include_proto!("google.longrunning");
    }
}

/// `oprun.*` packages.
pub mod oprun {
    /// `oprun.v1`.
    pub mod v1 {
        tonic::include_proto!("oprun.v1");
    }
}

/// `google.rpc.Code` is the one code type of oprun's API; tonic's own is the same numbering,
/// used only where a `tonic::Status` is made or read.
impl From<google::rpc::Code> for tonic::Code {
    fn from(code: google::rpc::Code) -> Self {
        tonic::Code::from_i32(code as i32)
    }
}

impl From<tonic::Code> for google::rpc::Code {
    fn from(code: tonic::Code) -> Self {
        google::rpc::Code::try_from(code as i32).unwrap_or(google::rpc::Code::Unknown)
    }
}

/// The encoded descriptor set of every proto oprun serves, with imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/oprun_descriptor.bin"));

/// [`FILE_DESCRIPTOR_SET`] decoded, once: every message, service and option oprun's protos
/// define, for proto3 JSON, the REST gateway and reflection.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        // The set is compiled into the binary by build.rs from the same protos the code was
        // generated from; failing to decode it is a build defect, found by every test.
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes")
    })
}
