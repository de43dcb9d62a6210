//! Server-sent events of operation changes, for the REST gateway's watch routes: each batch
//! a stream yields is written in its server-sent-events form, made once per batch (each
//! change's JSON once per change) however many readers send it; a comment line every
//! [`KEEP_ALIVE`] keeps proxies from closing a quiet stream; a stream that ends with an error
//! (the server shutting down) ends with an `error` event holding Google's JSON error.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http::StatusCode;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::scheduler::{Changes, OperationChanged};

/// The longest a stream stays silent: then a comment line is sent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The headers of an event stream.
fn headers() -> [(http::HeaderName, &'static str); 2] {
    [
        (http::header::CONTENT_TYPE, "text/event-stream"),
        (http::header::CACHE_CONTROL, "no-cache"),
    ]
}

/// The answer to HEAD on a stream's route.
pub(super) fn head() -> Response {
    (StatusCode::OK, headers()).into_response()
}

/// The event stream of `changes`.
pub(super) fn response(changes: Changes, pool: Arc<DescriptorPool>) -> Response {
    let events = futures::stream::unfold(Some(changes), move |state| {
        let pool = pool.clone();
        async move {
            let mut changes = state?;
            let next = tokio::time::timeout(KEEP_ALIVE, changes.next()).await;
            match next {
                Err(_) => Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b":\n\n")),
                    Some(changes),
                )),
                Ok(Some(Ok(batch))) => {
                    let bytes = batch.sse_form(|changes| {
                        let mut out = BytesMut::new();
                        for change in changes {
                            out.put_slice(b"data: ");
                            out.put_slice(&json_form(change, &pool));
                            out.put_slice(b"\n\n");
                        }
                        out.freeze()
                    });
                    Some((Ok(bytes), Some(changes)))
                }
                Ok(Some(Err(e))) => {
                    let status = tonic::Status::from(e);
                    let body = super::error::error_body(&status, &pool).to_string();
                    Some((
                        Ok(Bytes::from(format!("event: error\ndata: {body}\n\n"))),
                        None,
                    ))
                }
                Ok(None) => None,
            }
        }
    });
    (StatusCode::OK, headers(), Body::from_stream(events)).into_response()
}

/// The change's operation as proto3 JSON, made once for every stream that sends it.
fn json_form(change: &Arc<OperationChanged>, pool: &DescriptorPool) -> Bytes {
    change
        .wire
        .json
        .get_or_init(|| {
            let proto = crate::service::proto_form(change);
            render(&proto, pool).unwrap_or_else(|e| {
                tracing::error!(error = %e, "an operation could not be rendered as JSON");
                Bytes::from_static(b"{}")
            })
        })
        .clone()
}

fn render(proto: &[u8], pool: &DescriptorPool) -> Result<Bytes, String> {
    let desc = pool
        .get_message_by_name("google.longrunning.Operation")
        .ok_or("google.longrunning.Operation is not in the pool")?;
    let message = DynamicMessage::decode(desc, proto).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    message
        .serialize_with_options(&mut ser, &SerializeOptions::new())
        .map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}
