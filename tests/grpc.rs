//! gRPC end to end with a real gRPC client (tonic, over h2c): a function marked
//! `wavelink.dev/protocol: h2c` is called on its RIs and, under a burst, on EIs that a Wavelet
//! starts; an overloaded one answers `UNAVAILABLE`. The function is the workload's
//! `faas.Executor/Execute` (the invoke service of serverless trace loaders).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use wavelink_loadtest::grpc::{EXECUTE_PATH, FaasReply, FaasRequest};

/// A channel to the proxy with `host` as the calls' authority (what the proxy routes by).
async fn channel(proxy: SocketAddr, host: &str) -> Channel {
    Endpoint::from_shared(format!("http://{proxy}"))
        .expect("endpoint")
        .origin(format!("http://{host}").parse().expect("origin"))
        .connect_timeout(Duration::from_secs(5))
        .timeout(PATIENCE)
        .connect()
        .await
        .expect("an h2c connection to the proxy")
}

/// One `Execute` call that works `runtime_ms` on the instance.
async fn execute(channel: Channel, runtime_ms: u32) -> Result<tonic::Response<FaasReply>, tonic::Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = FaasRequest { message: "hello".into(), runtime_in_milli_sec: runtime_ms, memory_in_mebi_bytes: 1 };
    client
        .unary(
            tonic::Request::new(request),
            PathAndQuery::from_static(EXECUTE_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
}

fn metadata(response: &tonic::Response<FaasReply>, key: &str) -> String {
    response.metadata().get(key).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

const HOST: &str = "hello.default.example.com";

fn grpc_function(annotations: &str, instances: &[&FnInstance]) -> String {
    let list: Vec<String> = instances.iter().map(|i| format!("\"{}\"", i.addr)).collect();
    format!(
        "  - name: hello\n    annotations: {{ wavelink.dev/protocol: h2c, {annotations} }}\n    instances: [{}]\n",
        list.join(", ")
    )
}

#[test]
fn a_grpc_client_calls_a_function_on_its_regular_instances_and_gets_unavailable_when_it_is_overloaded() {
    let ri = start_fn("grpc-ri");
    // One slot and no queue: while a call runs, another is turned away at once.
    let proxy = start_proxy(&grpc_function(
        "wavelink.dev/container-concurrency: \"1\", wavelink.dev/queue-depth: \"0\", wavelink.dev/scaling-mode: async",
        &[&ri],
    ));
    let runtime = runtime();
    runtime.block_on(async {
        let channel = channel(proxy.listen, HOST).await;
        let reply = execute(channel.clone(), 5).await.expect("the call succeeds");
        assert_eq!(reply.get_ref().message, "hello from grpc-ri");
        assert!(reply.get_ref().duration_in_micro_sec >= 5_000, "{:?}", reply.get_ref());
        assert_eq!(metadata(&reply, "x-wavelink-track"), "regular");
        assert!(!metadata(&reply, "x-request-id").is_empty());
        // Spoken to over h2c, as gRPC servers other than this workload require.
        assert_eq!(metadata(&reply, "x-wavelink-http-version"), "HTTP/2.0");

        // The function's own errors reach the client as they were sent.
        let error = execute(channel.clone(), 3_600_000).await.expect_err("beyond the workload's limit");
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

        // Overloaded: UNAVAILABLE, which gRPC clients know to retry.
        let long = tokio::spawn(execute(channel.clone(), 2_000));
        tokio::time::timeout(PATIENCE, async {
            while proxy.function_stats("hello")["in_flight"]["regular"] != 1 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the slot is taken");
        let error = execute(channel.clone(), 1).await.expect_err("no slot, no queue");
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        let long = long.await.expect("task").expect("the long call succeeds");
        assert_eq!(long.get_ref().message, "hello from grpc-ri");
    });
    assert_eq!(proxy.function_stats("hello")["in_flight"]["regular"], 0, "no slot leaked");
}

#[test]
fn a_burst_of_grpc_calls_beyond_the_regular_instances_is_served_by_emergency_instances() {
    let ri = start_fn("grpc-ri");
    let f = function_with_command(
        "grpc",
        "[\"wavelink-fn\"]",
        "wavelink.dev/protocol: h2c, wavelink.dev/container-concurrency: \"1\", wavelink.dev/emergency-keepalive: 1s",
        &format!("    instances: [\"{}\"]\n", ri.addr),
    );
    let stack = Stack::new(&f.yaml, &[20]);
    let _wavelet = stack.start_wavelet(0);
    let _proxy = stack.start_proxy();
    let runtime = runtime();
    let replies = runtime.block_on(async {
        // One connection, many streams: the proxy gives each call its own slot.
        let channel = channel(stack.proxy_listen, &f.host).await;
        let calls: Vec<_> = (0..6).map(|_| tokio::spawn(execute(channel.clone(), 300))).collect();
        let mut replies = Vec::new();
        for call in calls {
            replies.push(call.await.expect("task").expect("every call succeeds"));
        }
        replies
    });
    let mut tracks = Vec::new();
    let mut emergency_instances = HashSet::new();
    for reply in &replies {
        let track = metadata(reply, "x-wavelink-track");
        let instance = metadata(reply, "x-wavelink-instance");
        assert_eq!(metadata(reply, "x-wavelink-in-flight"), "1", "an instance served two calls at once");
        assert_eq!(metadata(reply, "x-wavelink-http-version"), "HTTP/2.0", "h2c on both tracks");
        if track == "emergency" {
            assert_ne!(instance, "grpc-ri");
            emergency_instances.insert(instance);
        } else {
            assert_eq!((track.as_str(), instance.as_str()), ("regular", "grpc-ri"));
        }
        tracks.push(track);
    }
    let regular = tracks.iter().filter(|t| *t == "regular").count();
    assert!((1..=2).contains(&regular), "one RI of concurrency 1 takes one call at a time: {tracks:?}");
    assert!(emergency_instances.len() >= 3, "the overflow ran on EIs: {tracks:?}");
    wait_for_no_instances(&f.marker, Duration::from_secs(15));
}
