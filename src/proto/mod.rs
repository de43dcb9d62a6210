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

/// The encoded descriptor set of every proto oprun serves, with imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/oprun_descriptor.bin"));
