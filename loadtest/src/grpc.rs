//! The workload's gRPC face: `faas.Executor/Execute`, the invoke service of the trace functions
//! serverless benchmark loaders call (vHive's InVitro: `FaasRequest{message, runtimeInMilliSec,
//! memoryInMebiBytes}` → `FaasReply{message, durationInMicroSec, memoryUsageInKb}`), so a gRPC
//! loader can drive WaveLink as it drives Knative. The instance does the asked work for real, as
//! the HTTP face does with `?ms=` and `?mb=`, within the same limits.
//!
//! ```proto
//! syntax = "proto3";
//! package faas;
//! service Executor { rpc Execute (FaasRequest) returns (FaasReply); }
//! message FaasRequest { string message = 1; uint32 runtimeInMilliSec = 2; uint32 memoryInMebiBytes = 3; }
//! message FaasReply { string message = 1; uint32 durationInMicroSec = 2; uint32 memoryUsageInKb = 3; }
//! ```
//!
//! Replies carry `x-wavelink-instance`, `x-wavelink-in-flight` and `x-wavelink-http-version`
//! (the HTTP version the call arrived in) as metadata.
//!
//! The messages are written out with prost's derive (what `prost-build` generates from the proto
//! above), so building needs no `protoc`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body::Body as HttpBody;
use tonic::{Code, Status};

use crate::workload::{Instance, Limits, burn_cpu, touch_memory};

/// The request path of `faas.Executor/Execute`.
pub const EXECUTE_PATH: &str = "/faas.Executor/Execute";

#[derive(Clone, PartialEq, prost::Message)]
pub struct FaasRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub runtime_in_milli_sec: u32,
    #[prost(uint32, tag = "3")]
    pub memory_in_mebi_bytes: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FaasReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub duration_in_micro_sec: u32,
    #[prost(uint32, tag = "3")]
    pub memory_usage_in_kb: u32,
}

/// Whether a request is a gRPC call (by its content type).
pub fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serves one gRPC call: `Execute`, or `UNIMPLEMENTED` for any other method.
pub(crate) async fn serve<B>(
    request: http::Request<B>,
    instance: Arc<Instance>,
    in_flight: u32,
) -> http::Response<tonic::body::Body>
where
    B: HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    if request.uri().path() != EXECUTE_PATH {
        let status = Status::unimplemented(format!("{} is not a method of this function", request.uri().path()));
        return status.into_http();
    }
    let version = format!("{:?}", request.version());
    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
    let mut response = grpc.unary(Execute { instance, in_flight }, request).await;
    // Which HTTP reached the instance: gRPC servers other than this one speak HTTP/2 only.
    if let Ok(version) = http::HeaderValue::from_str(&version) {
        response.headers_mut().insert("x-wavelink-http-version", version);
    }
    response
}

struct Execute {
    instance: Arc<Instance>,
    in_flight: u32,
}

impl tonic::server::UnaryService<FaasRequest> for Execute {
    type Response = FaasReply;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<FaasReply>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<FaasRequest>) -> Self::Future {
        let instance = self.instance.clone();
        let in_flight = self.in_flight;
        Box::pin(async move {
            let started = Instant::now();
            let asked = request.into_inner();
            let (cpu_ms, memory_mb) = within_limits(&asked, instance.limits)?;
            let touched = tokio::task::spawn_blocking(move || {
                let memory = touch_memory(memory_mb);
                burn_cpu(Duration::from_millis(cpu_ms));
                memory.len()
            })
            .await
            .map_err(|e| Status::internal(format!("work failed: {e}")))?;
            let reply = FaasReply {
                message: format!(
                    "{} from {}",
                    if asked.message.is_empty() { "ok" } else { &asked.message },
                    instance.id
                ),
                duration_in_micro_sec: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
                memory_usage_in_kb: u32::try_from(touched / 1024).unwrap_or(u32::MAX),
            };
            let mut response = tonic::Response::new(reply);
            // What the HTTP face says in headers, as metadata.
            let metadata = response.metadata_mut();
            if let Ok(id) = instance.id.parse() {
                metadata.insert("x-wavelink-instance", id);
            }
            metadata.insert("x-wavelink-in-flight", in_flight.into());
            Ok(response)
        })
    }
}

/// The asked runtime and memory, or `INVALID_ARGUMENT` beyond the instance's limits.
fn within_limits(asked: &FaasRequest, limits: Limits) -> Result<(u64, u64), Status> {
    let (ms, mb) = (u64::from(asked.runtime_in_milli_sec), u64::from(asked.memory_in_mebi_bytes));
    if ms > limits.ms || mb > limits.mb {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "runtimeInMilliSec {ms} and memoryInMebiBytes {mb} must be at most {} and {}",
                limits.ms, limits.mb
            ),
        ));
    }
    Ok((ms, mb))
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn requests_beyond_the_limits_are_invalid_arguments() {
        let limits = Limits { ms: 100, mb: 10 };
        let asked = |ms, mb| FaasRequest { message: String::new(), runtime_in_milli_sec: ms, memory_in_mebi_bytes: mb };
        assert_eq!(within_limits(&asked(100, 10), limits).unwrap(), (100, 10));
        assert_eq!(within_limits(&asked(101, 0), limits).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(within_limits(&asked(0, 11), limits).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn the_messages_have_the_wire_form_of_the_proto() {
        // Field 2 (varint) of 50 is 0x10 0x32: what any gRPC client's FaasRequest encodes to.
        let request = FaasRequest { message: "hi".into(), runtime_in_milli_sec: 50, memory_in_mebi_bytes: 3 };
        assert_eq!(request.encode_to_vec(), [0x0a, 0x02, b'h', b'i', 0x10, 0x32, 0x18, 0x03]);
    }
}
