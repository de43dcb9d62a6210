//! Google's JSON error (`{"error": {"code", "message", "status", "details"}}`) with the HTTP
//! status of the standard gRPC → HTTP mapping, made from a `tonic::Status` so that REST callers
//! see exactly what gRPC callers see.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};
use serde_json::json;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::proto::ERROR_DOMAIN;

/// The HTTP status of a gRPC code (`google/rpc/code.proto`'s mapping).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        // 499 Client Closed Request: not in the http crate's constants, but valid.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The `google.rpc.Code` name of a code (`NOT_FOUND`).
pub fn code_name(code: Code) -> &'static str {
    crate::Code::try_from(code as i32).map_or("UNKNOWN", |c| c.as_str_name())
}

/// An error the gateway itself finds (before or instead of a call): the code, a stable
/// upper-case reason for `ErrorInfo` and the message.
pub fn gateway_status(code: Code, reason: &str, message: impl Into<String>) -> tonic::Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::new());
    tonic::Status::with_error_details(code, message, details)
}

/// The JSON body of an error: `{"error": {...}}`, its details rendered as proto3 JSON `Any`s
/// through `pool` (details of types the pool does not know are left out).
pub fn error_body(status: &tonic::Status, pool: &DescriptorPool) -> serde_json::Value {
    let code = status.code();
    json!({
        "error": {
            "code": http_status(code).as_u16(),
            // Every message is bounded, whatever made it (the gateway's own, or a service's).
            "message": crate::text::bound_echo(status.message()),
            "status": code_name(code),
            "details": details_json(status.details(), pool),
        }
    })
}

fn details_json(bytes: &[u8], pool: &DescriptorPool) -> Vec<serde_json::Value> {
    let Some(desc) = pool.get_message_by_name("google.rpc.Status") else {
        return Vec::new();
    };
    let Ok(status) = DynamicMessage::decode(desc, bytes) else {
        return Vec::new();
    };
    let Some(Value::List(details)) = status.get_field_by_name("details").map(|v| v.into_owned())
    else {
        return Vec::new();
    };
    details
        .into_iter()
        .filter_map(|detail| {
            let Value::Message(any) = detail else {
                return None;
            };
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut out);
            any.serialize_with_options(&mut ser, &SerializeOptions::new())
                .ok()?;
            serde_json::from_slice(&out).ok()
        })
        .collect()
}

/// 405 for a method a path is not served with: Google's JSON error (status UNIMPLEMENTED,
/// reason `METHOD_NOT_ALLOWED`) and the `Allow` header.
pub fn method_not_allowed(
    method: &http::Method,
    path: &str,
    allow: &[&str],
    pool: &DescriptorPool,
) -> Response {
    let status = gateway_status(
        Code::Unimplemented,
        "METHOD_NOT_ALLOWED",
        format!(
            "{method} is not served on {}; it takes {}",
            crate::text::quote(path),
            allow.join(", ")
        ),
    );
    let mut body = error_body(&status, pool);
    body["error"]["code"] = 405.into();
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response();
    if let Ok(v) = http::HeaderValue::from_str(&allow.join(", ")) {
        response.headers_mut().insert(http::header::ALLOW, v);
    }
    response
}

/// The HTTP status of an error: that of its code, but for the gateway's own refusals that
/// HTTP has a closer word for (415 for a body that is not JSON).
fn response_status(status: &tonic::Status) -> StatusCode {
    let details = status.get_error_details();
    match details.error_info().map(|info| info.reason.as_str()) {
        Some("UNSUPPORTED_MEDIA_TYPE") => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => http_status(status.code()),
    }
}

/// An error as an HTTP response.
pub fn error_response(status: &tonic::Status, pool: &DescriptorPool) -> Response {
    let code = response_status(status);
    let mut body = error_body(status, pool);
    body["error"]["code"] = code.as_u16().into();
    let mut response = (code, axum::Json(body)).into_response();
    if let Some(retry) = status
        .get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
    {
        if let Ok(v) = http::HeaderValue::from_str(&retry.as_secs().max(1).to_string()) {
            response.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code maps to the HTTP status `google/rpc/code.proto` documents.
    #[test]
    fn codes_map_to_the_documented_http_statuses() {
        let expected = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in expected {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
            let names = crate::proto::descriptor_pool()
                .get_enum_by_name("google.rpc.Code")
                .expect("google.rpc.Code is in the pool");
            let name = names.get_value(code as i32).expect("a known code");
            assert_eq!(code_name(code), name.name(), "{code:?}");
        }
    }

    /// The body carries the code, the status name, the message and the ErrorInfo as `@type`d
    /// JSON.
    #[test]
    fn error_body_has_google_shape() {
        let pool = crate::proto::descriptor_pool();
        let status = gateway_status(Code::NotFound, "NO_ROUTE", "no such thing");
        let body = error_body(&status, pool);
        assert_eq!(body["error"]["code"], 404);
        assert_eq!(body["error"]["status"], "NOT_FOUND");
        assert_eq!(body["error"]["message"], "no such thing");
        assert_eq!(
            body["error"]["details"][0]["@type"],
            "type.googleapis.com/google.rpc.ErrorInfo"
        );
        assert_eq!(body["error"]["details"][0]["reason"], "NO_ROUTE");
        assert_eq!(body["error"]["details"][0]["domain"], ERROR_DOMAIN);
    }
}
