//! The standard track on Kubernetes, against the real apiserver of `../shared/k8s-testenv`:
//! proxy and controller run as `wavelink` processes with a `kubernetes:` config section, and a
//! test-side kubelet turns replicas into local `wavelink fn` processes and EndpointSlices.
//! Skipped, with a message, when no test apiserver is given (`make test` starts one).

#[path = "support/cluster.rs"]
mod cluster;
mod support;
#[path = "support/tls_client.rs"]
mod tls_client;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::{Kubelet, serve_hot_function, setup, test_cluster};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use nix::sys::signal::Signal;
use support::{PATIENCE, burst_with, get, metric, run_as_args, wait_until, wait_within};

#[test]
fn load_seen_by_the_proxy_scales_a_deployment_up_the_proxy_routes_to_its_pods_and_it_scales_back_down() {
    let Some(cluster) = test_cluster("scale-loop") else { return };
    // `async`: requests wait for RIs (no Wavelets here), so the only capacity is what the
    // controller asks Kubernetes for.
    let hot = serve_hot_function(&cluster);
    let (setup, controller_admin) = (&hot.setup, hot.controller_admin);

    // Four clients, each one request at a time, for a few seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let host = format!("hot.{}.example.com", cluster.namespace);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, host, addr) = (stop.clone(), ok.clone(), host.clone(), setup.proxy_listen);
            std::thread::spawn(move || {
                let mut instances = std::collections::HashSet::new();
                let deadline = Instant::now() + PATIENCE * 2;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let response = get(addr, &host, "/?sleep=200").expect("request through the proxy");
                    assert_eq!(response.status, 200, "{}", response.text());
                    assert_eq!(response.header("x-wavelink-track"), Some("regular"));
                    instances.insert(response.header("x-wavelink-instance").unwrap_or_default().to_owned());
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                instances
            })
        })
        .collect();
    let mut peak = 0;
    wait_until("the controller scales the Deployment up and requests complete on its pods", || {
        peak = peak.max(cluster.replicas("hot"));
        peak >= 2 && ok.load(Ordering::SeqCst) >= 20
    });
    stop.store(true, Ordering::SeqCst);
    let mut instances = std::collections::HashSet::new();
    for client in clients {
        instances.extend(client.join().expect("client"));
    }
    assert!(instances.len() >= 2, "requests were spread over the scaled-up pods: {instances:?}");
    assert!(
        metric(
            controller_admin,
            &format!("wavelink_controller_scale_writes_total{{function=\"{}/hot\"}}", cluster.namespace)
        ) >= 1.0
    );

    // With the load gone, after the 6 s window, back to min-scale (0), and the proxy has no RIs.
    wait_until("the Deployment is scaled back to 0", || cluster.replicas("hot") == 0);
    let path = format!("/v1/functions/{}/hot/instances", cluster.namespace);
    wait_until("the proxy no longer routes to removed pods", || {
        get(setup.proxy_admin, "admin", &path)
            .is_ok_and(|r| serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).is_ok_and(|v| v.is_empty()))
    });
}

#[test]
fn a_bad_annotation_leaves_an_event_on_the_deployment_and_is_never_scaled() {
    let Some(cluster) = test_cluster("bad-annotation") else { return };
    cluster.create_function("good", 2, &[("wavelink.dev/window", "2s")]);
    cluster.create_function("bad", 2, &[("wavelink.dev/window", "2s"), ("wavelink.dev/container-concurrency", "0")]);
    let setup = setup(&cluster);
    // The proxy's data says there is no load (without it, nothing is scaled down).
    let _proxy = setup.start_proxy(&cluster);
    let (_controller, admin) = setup.start_controller(&cluster, "solo");

    // The good function is scaled (to min-scale 0 without load): the controller did act.
    wait_until("the good function is scaled to 0", || cluster.replicas("good") == 0);
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut note = String::new();
    wait_until("a Warning Event on the bad Deployment", || {
        let list = cluster.runtime.block_on(events.list(&ListParams::default())).expect("list events");
        note = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad"))
            .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("InvalidFunction"))
            .filter_map(|e| e.note.clone())
            .next()
            .unwrap_or_default();
        !note.is_empty()
    });
    assert!(note.contains("wavelink.dev/container-concurrency"), "{note}");
    assert!(note.contains("\"0\""), "{note}");
    assert!(note.contains("from 1 to 1000"), "{note}");
    assert_eq!(cluster.replicas("bad"), 2, "a rejected function is never scaled");
    let writes = format!("wavelink_controller_scale_writes_total{{function=\"{}/bad\"}}", cluster.namespace);
    assert_eq!(metric(admin, &writes), 0.0);
    // Reported once, not at every decision.
    std::thread::sleep(Duration::from_secs(3));
    let list = cluster.runtime.block_on(events.list(&ListParams::default())).expect("list events");
    let about_bad =
        list.items.iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad")).count();
    assert_eq!(about_bad, 1, "one Event for one problem");
}

#[test]
fn of_two_controllers_only_the_leader_writes_and_the_other_takes_over_when_it_dies() {
    let Some(cluster) = test_cluster("two-controllers") else { return };
    let setup = setup(&cluster);
    let _proxy = setup.start_proxy(&cluster);
    let (mut first, first_admin) = setup.start_controller(&cluster, "first");
    wait_until("the first controller leads", || metric(first_admin, "wavelink_controller_leader") == 1.0);
    let (_second, second_admin) = setup.start_controller(&cluster, "second");

    cluster.create_function("shared", 3, &[("wavelink.dev/window", "2s")]);
    wait_until("the Deployment is scaled to 0", || cluster.replicas("shared") == 0);
    let writes = |admin, name: &str| {
        metric(admin, &format!("wavelink_controller_scale_writes_total{{function=\"{}/{name}\"}}", cluster.namespace))
    };
    assert!(writes(first_admin, "shared") >= 1.0);
    assert_eq!(writes(second_admin, "shared"), 0.0, "the follower wrote:\n{}", setup.log("controller-second"));
    assert_eq!(metric(second_admin, "wavelink_controller_leader"), 0.0);
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let holder = |leases: &Api<Lease>| {
        let lease = cluster.runtime.block_on(leases.get("wavelink-controller")).expect("lease");
        lease.spec.and_then(|s| s.holder_identity).unwrap_or_default()
    };
    assert_eq!(holder(&leases), "first");

    // The leader dies without handing over; the lease expires (3 s) and the other takes it.
    first.signal(Signal::SIGKILL);
    let _ = first.wait_timeout(PATIENCE);
    wait_within("the second controller leads", PATIENCE, || metric(second_admin, "wavelink_controller_leader") == 1.0);
    assert_eq!(holder(&leases), "second");
    cluster.create_function("later", 2, &[("wavelink.dev/window", "2s")]);
    wait_until("the new leader scales", || cluster.replicas("later") == 0);
    assert!(writes(second_admin, "later") >= 1.0);
}

#[test]
fn overflow_spills_to_a_wavelet_found_through_its_service_which_runs_the_deployments_command() {
    let Some(cluster) = test_cluster("spill") else { return };
    // No RIs (replicas 0, no controller): in `dual` mode every request goes to an EI, started
    // from the Deployment's container command (`wavelink fn`) by a Wavelet the proxy found
    // through the endpoints of Service wavelink-wavelet.
    cluster.create_function("burst", 0, &[("wavelink.dev/emergency-keepalive", "1s")]);
    let setup = setup(&cluster);
    let run_as: Vec<String> = run_as_args().iter().map(|a| (*a).to_owned()).collect();
    let _wavelet = setup.start_wavelet(&cluster, &run_as);
    let _proxy = setup.start_proxy(&cluster);

    let host = format!("burst.{}.example.com", cluster.namespace);
    for (response, _) in burst_with(setup.proxy_listen, &host, "/?sleep=50", 5, "") {
        assert_eq!(response.status, 200, "{}\n{}", response.text(), setup.log("wavelet"));
        assert_eq!(response.header("x-wavelink-track"), Some("emergency"));
    }
}

#[test]
fn with_containerd_an_emergency_instance_is_the_container_of_the_deployments_pod_template() {
    let Some(cluster) = test_cluster("spill-container") else { return };
    let Some(containerd) = support::containerd::containerd("spill to a container") else { return };
    // The pod template names the image and an env value; no command: the image's entrypoint
    // (wavelink-fn) runs, as in the function's pods.
    let container = serde_json::json!({
        "name": "fn",
        "image": support::containerd::IMAGE,
        "env": [{ "name": "FN_MESSAGE", "value": "from-the-pod-template" }],
    });
    cluster.create_function_with("boxed", 0, &[("wavelink.dev/emergency-keepalive", "1s")], container);
    let missing = serde_json::json!({ "name": "fn", "image": "localhost/not-on-this-node:9" });
    cluster.create_function_with("missing", 0, &[], missing);
    let setup = setup(&cluster);
    let _wavelet = setup.start_wavelet(&cluster, &containerd.wavelet_args());
    let _proxy = setup.start_proxy(&cluster);

    let host = format!("boxed.{}.example.com", cluster.namespace);
    for (response, _) in burst_with(setup.proxy_listen, &host, "/?sleep=50", 5, "") {
        assert_eq!(response.status, 200, "{}\n{}", response.text(), setup.log("wavelet"));
        assert_eq!(response.header("x-wavelink-track"), Some("emergency"));
        assert_eq!(response.header("x-wavelink-message"), Some("from-the-pod-template"));
    }
    assert!(!containerd.containers().is_empty(), "the instances were containers of this containerd");

    // An image the node does not have: a quick 5xx naming it, and a Warning Event on the
    // function's Deployment (where `kubectl describe` shows it), naming node and image.
    let host = format!("missing.{}.example.com", cluster.namespace);
    let started = Instant::now();
    let response = get(setup.proxy_listen, &host, "/").expect("request");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(response.status >= 500 && response.text().contains("localhost/not-on-this-node:9"), "{}", response.text());
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let mut note = String::new();
    wait_until("a Warning Event on the Deployment with the missing image", || {
        let list = cluster.runtime.block_on(events.list(&ListParams::default())).expect("list events");
        note = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("missing"))
            .filter(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some("EmergencyImageUnavailable")
            })
            .filter_map(|e| e.note.clone())
            .next()
            .unwrap_or_default();
        !note.is_empty()
    });
    assert!(note.contains("localhost/not-on-this-node:9") && note.contains("missing"), "{note}");
}

#[test]
fn in_sync_mode_the_proxy_asks_every_controller_for_an_ri_and_only_the_leader_writes() {
    let Some(cluster) = test_cluster("sync") else { return };
    cluster.create_function(
        "pokey",
        0,
        &[
            ("wavelink.dev/scaling-mode", "sync"),
            ("wavelink.dev/initial-scale", "0"),
            ("wavelink.dev/queue-timeout", "60s"),
        ],
    );
    let _kubelet = Kubelet::start(&cluster);
    let setup = setup(&cluster);
    let (_leader, leader_admin) = setup.start_controller(&cluster, "leader");
    wait_until("the first controller leads", || metric(leader_admin, "wavelink_controller_leader") == 1.0);
    let (_follower, follower_admin) = setup.start_controller(&cluster, "follower");
    for admin in [leader_admin, follower_admin] {
        cluster.publish_endpoint("wavelink-controller-admin", "admin", admin);
    }
    let _proxy = setup.start_proxy(&cluster);

    let host = format!("pokey.{}.example.com", cluster.namespace);
    let response = get(setup.proxy_listen, &host, "/?sleep=10").expect("request");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("x-wavelink-track"), Some("regular"));
    let pokes = format!("wavelink_controller_pokes_total{{function=\"{}/pokey\"}}", cluster.namespace);
    let writes = format!("wavelink_controller_scale_writes_total{{function=\"{}/pokey\"}}", cluster.namespace);
    wait_until("both controllers were asked", || {
        metric(leader_admin, &pokes) >= 1.0 && metric(follower_admin, &pokes) >= 1.0
    });
    assert!(metric(leader_admin, &writes) >= 1.0);
    assert_eq!(metric(follower_admin, &writes), 0.0, "a follower wrote:\n{}", setup.log("controller-follower"));
}

#[test]
fn the_proxy_serves_a_tls_secret_and_follows_its_renewal_and_deletion() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{DeleteParams, PostParams};
    use tls_client::{certificate, tls_connect};

    let Some(cluster) = test_cluster("tls-secret") else { return };
    let names = [format!("*.{}.example.com", cluster.namespace)];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (first, renewed) = (certificate(&names), certificate(&names));
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    cluster.serve_secrets();
    let data = |cert: &tls_client::TestCertificate| {
        let pem = |text: &str| k8s_openapi::ByteString(text.as_bytes().to_vec());
        Some([("tls.crt".to_owned(), pem(&cert.cert_pem)), ("tls.key".to_owned(), pem(&cert.key_pem))].into())
    };
    let secret = |cert: &tls_client::TestCertificate| Secret {
        metadata: kube::api::ObjectMeta { name: Some("site-tls".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: data(cert),
        ..Default::default()
    };
    cluster.runtime.block_on(secrets.create(&PostParams::default(), &secret(&first))).expect("create the Secret");

    let setup = setup(&cluster);
    let tls = cluster::loopback();
    let config = std::fs::read_to_string(&setup.config).expect("config");
    let config = config.replace(
        "grace-period: 1s }",
        &format!("grace-period: 1s, tls: {{ listen: \"{tls}\", secrets: [{}/site-tls] }} }}", cluster.namespace),
    );
    std::fs::write(&setup.config, config).expect("config");
    let _proxy = setup.start_proxy(&cluster);

    let host = format!("hello.{}.example.com", cluster.namespace);
    let served = |host: &str| {
        cluster.runtime.block_on(async {
            tokio::time::timeout(PATIENCE, tls_connect(tls, Some(host), &[])).await.ok()?.ok().map(|c| c.leaf)
        })
    };
    // Served from the start: the proxy waits for its Secrets before it is ready.
    assert_eq!(served(&host), Some(first.der.clone()), "the Secret's certificate");

    // Renewed (as cert-manager does: the same Secret, new data): new connections get it.
    let mut current = cluster.runtime.block_on(secrets.get("site-tls")).expect("get the Secret");
    current.data = data(&renewed);
    cluster.runtime.block_on(secrets.replace("site-tls", &PostParams::default(), &current)).expect("renew");
    wait_until("the renewed certificate is served", || served(&host) == Some(renewed.der.clone()));

    // Deleted: nothing is served from it any more.
    cluster.runtime.block_on(secrets.delete("site-tls", &DeleteParams::default())).expect("delete");
    wait_until("handshakes fail without a certificate", || served(&host).is_none());
}
