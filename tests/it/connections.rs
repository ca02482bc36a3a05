//! Connection limits (issue 15 item 3): one client address cannot hold every connection slot, and
//! an idle keep-alive connection is closed after `MEDIA_KEEPALIVE_TIMEOUT`.

use std::net::IpAddr;

use crate::support::app::{spawn_app_with, Stack};
use crate::support::connections::{connect_from, get_on, metrics_text, read_until_closed, HANG_GUARD};
use crate::support::limits::metric;

const FLOODER: [u8; 4] = [127, 0, 0, 2];
const PROBER: [u8; 4] = [127, 0, 0, 1];

#[tokio::test]
async fn connections_over_one_address_cap_are_closed_and_never_take_the_slots_of_others() {
    // 16 slots in all, 8 per address, and idle connections kept for 5 minutes: without the
    // per-address cap the flood below would hold all 16 and /healthz would wait in the backlog.
    let app = spawn_app_with(
        Stack::SqliteFs,
        &[("MEDIA_MAX_CONNECTIONS", "16"), ("MEDIA_MAX_CONNECTIONS_PER_IP", "8"), ("MEDIA_KEEPALIVE_TIMEOUT", "300s")],
    )
    .await;
    let refused_before = metric(
        &metrics_text(&app.http, &app.address).await,
        "media_connections_refused_total",
        &[("reason", "per_ip")],
    );

    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(connect_from(IpAddr::from(FLOODER), app.port).await);
    }

    // Another address is served while the flood is open.
    let mut probe = connect_from(IpAddr::from(PROBER), app.port).await;
    let (status, body) = get_on(&mut probe, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let healthz = tokio::time::timeout(HANG_GUARD, app.http.get(app.url("/healthz")).send()).await;
    assert_eq!(healthz.expect("/healthz answers while one address floods").unwrap().status(), 200);

    // Accepted in order: the first 8 are served, the 32 after them were closed by the server.
    let (served, over) = flood.split_at_mut(8);
    for stream in over.iter_mut() {
        assert!(read_until_closed(stream).await.is_empty(), "a refused connection gets no bytes");
    }
    for stream in served.iter_mut() {
        let (status, _) = get_on(stream, "/healthz").await;
        assert_eq!(status, 200, "connections under the cap are served");
    }
    let refused = metric(
        &metrics_text(&app.http, &app.address).await,
        "media_connections_refused_total",
        &[("reason", "per_ip")],
    );
    assert!(refused - refused_before >= 32.0, "each refusal is counted: {refused_before} → {refused}");

    // Once the flooder closes its connections, its address is served again.
    drop(flood);
    let mut again = connect_from(IpAddr::from(FLOODER), app.port).await;
    let (status, _) = get_on(&mut again, "/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_and_a_silent_one_are_closed_after_the_keepalive_timeout() {
    let app = spawn_app_with(Stack::SqliteFs, &[("MEDIA_KEEPALIVE_TIMEOUT", "1s")]).await;
    let timed_out_before =
        metric(&metrics_text(&app.http, &app.address).await, "media_connections_timed_out_total", &[]);

    // A kept-alive connection answers two requests, then goes idle: the server closes it.
    let mut kept = connect_from(IpAddr::from(PROBER), app.port).await;
    for _ in 0..2 {
        let (status, body) = get_on(&mut kept, "/healthz").await;
        assert_eq!(status, 200, "{body}");
    }
    // Sent no request head: the server closes without a word (no 408 to a client that asked nothing).
    let mut silent = connect_from(IpAddr::from(PROBER), app.port).await;

    assert!(read_until_closed(&mut kept).await.is_empty(), "nothing is sent before the close");
    assert!(read_until_closed(&mut silent).await.is_empty());
    let timed_out = metric(&metrics_text(&app.http, &app.address).await, "media_connections_timed_out_total", &[]);
    assert!(timed_out - timed_out_before >= 2.0, "counted: {timed_out_before} → {timed_out}");
}
